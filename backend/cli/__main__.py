from backend.cli.commands import main

raise SystemExit(main())
