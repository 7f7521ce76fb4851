"""Many runs: planning a sweep (``plan``), the checks and preparations before it (``preflight``), running
notebooks (``notebooks``), the local process pool (``local``) and Slurm (``slurm``), and what happened
(``outcomes``). ``run_all.py`` drives it.

The top of the house: may import every stage below. Loads no TensorFlow (the notebooks' kernels do).
"""
