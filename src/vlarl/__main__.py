from vlarl.cli import main

raise SystemExit(main())
