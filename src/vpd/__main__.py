from vpd.cli import main

raise SystemExit(main())
