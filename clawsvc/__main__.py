from clawsvc.cli import main

raise SystemExit(main())
