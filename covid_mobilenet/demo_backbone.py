"""The command ``python -m covid_mobilenet.demo_backbone``: pretrains the demo's backbone on the pretext task
(``model/pretrain.py``; ``run_all.py --demo`` runs it by itself when the demo needs it)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .model.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
