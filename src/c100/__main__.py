from c100.cli import main

raise SystemExit(main())
