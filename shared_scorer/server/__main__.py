"""``python -m shared_scorer.server --data FILE [--data FILE ...] [--scenarios FILE] [--port 8765]``: the
replay server (the same as ``frugal replay-server``)."""

from shared_scorer.cli.replay import main

raise SystemExit(main())
