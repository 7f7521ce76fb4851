"""One run: the experiment notebook's steps (``steps.py``, and ``run_experiment``, all of them in order), its
parameters and their checks, the models it makes, its shortcut checks, its record (``metrics.json``) and its files.

May import ``model``, ``analysis`` (metrics and intervals of its predictions), ``data`` and ``common``.
"""
