"""``python -m shared_scorer.replay --data FILE [--data FILE ...] [--scenarios FILE] [--port 8765]``."""

from shared_scorer.replay.cli import main

raise SystemExit(main())
