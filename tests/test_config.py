import pytest

from c100 import UserError
from c100.config import TrainConfig, list_presets, load_preset, resolve


def test_presets_resolve_and_validate():
    assert {"default", "seed"} <= set(list_presets())
    for name in list_presets():
        cfg = resolve(name, None, {})
        assert isinstance(cfg, TrainConfig)


def test_seed_preset_is_the_homework_recipe():
    cfg = resolve("seed", None, {})
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.schedule, cfg.lr_decay) == ("resnet18-seed", "adam", 1e-3,
                                                                               "inverse-time", 0.004)
    assert (cfg.l2, cfg.batch_size, cfg.translate, cfg.pad_mode, cfg.flip, cfg.epochs, cfg.val_size) == (
        1e-4, 64, 6, "edge", True, 150, 5000)


def test_precedence_preset_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.5\nmilestones: [0.3, 0.6]\n")
    cfg = resolve("seed", str(f), {"lr": "0.25", "flip": False, "batch_size": None})
    assert cfg.epochs == 7 and cfg.lr == 0.25 and cfg.flip is False and cfg.batch_size == 64
    assert cfg.milestones == [0.3, 0.6]


def test_env_data_dir(monkeypatch):
    monkeypatch.setenv("CIFAR100_DATA", "/somewhere")
    assert resolve("default", None, {}).data_dir == "/somewhere"
    assert resolve("default", None, {"data_dir": "/else"}).data_dir == "/else"


@pytest.mark.parametrize("flags, message", [
    ({"epochs": "0"}, "--epochs must be positive"),
    ({"epochs": "ten"}, "'epochs' must be int, got 'ten'"),
    ({"epochs": "2.5"}, "'epochs' must be int"),
    ({"lr": "-1"}, "--lr must be >= 0"),
    ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop' is not one of: sgd, adam, adamw"),
    ({"model": "resnet19"}, "unknown model 'resnet19'"),
    ({"label_smoothing": "1.5"}, r"--label-smoothing must be in \[0, 1\)"),
    ({"translate": "20"}, "exceeds half the 32-px image"),
    ({"milestones": ["0.5", "2"]}, "fractions of training"),
])
def test_invalid_values(flags, message):
    with pytest.raises(UserError, match=message):
        resolve("default", None, flags)


def test_unknown_preset_and_keys(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'fast'; choose one of: cpu-fast, cpu-long, default, "):
        load_preset("fast")
    f = tmp_path / "c.yaml"
    f.write_text("epochz: 3\n")
    with pytest.raises(UserError, match="unknown config key 'epochz'"):
        resolve(None, str(f), {})
    f.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        resolve(None, str(f), {})
    with pytest.raises(UserError, match="cannot read config file"):
        resolve(None, str(tmp_path / "missing.yaml"), {})
