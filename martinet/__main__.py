from martinet.cli import main

raise SystemExit(main())
