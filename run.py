#!/usr/bin/env python3
"""Run an xnn experiment: python run.py configs/style.yaml [--device cpu|gpu|auto] (see --help)."""
from xnn.cli import main

raise SystemExit(main())
