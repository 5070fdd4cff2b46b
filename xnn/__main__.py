"""``python -m xnn run CONFIG ...`` (the CLI, as ``xnn run``) and ``python -m xnn studio``."""
import sys

from .cli import main

sys.exit(main())
