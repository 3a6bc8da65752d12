from rbd.client.cli import main

raise SystemExit(main())
