"""MobileNet fine-tuning on the COVID-19 Radiography data set, reproducibly.

One folder per stage of the data's path; a stage imports only the stages listed below it
(the layered contract in pyproject.toml, checked by ``lint-imports`` in the tests):

- ``sweep``, ``bench``: many runs (plan, checks, notebooks, local pool, Slurm) and the speed benchmark
- ``product``, ``run``: the trained model as a product (predict, export, model card); one run (the notebook's steps)
- ``analysis``, ``model``: analyses of finished runs (they read run files, never the model); the model
- ``data``: the data set, its split, masks and sources, the tf.data pipeline, the synthetic demo set
- ``common``: where files are and how they are written, the run layout, the configuration file, the machine

The modules at this level are the commands users type, ``python -m covid_mobilenet.<command>``:
``predict``, ``export``, ``benchmark``, ``demo`` and ``demo_backbone``.
No package ``__init__`` imports anything, so that ``run_all.py`` never loads TensorFlow.
"""
