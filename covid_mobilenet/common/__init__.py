"""The ground every stage stands on: where the project's files are and how a file is published
(atomically), the layout of one run's files (the interface between the stages), the configuration
file, and facts about the machine. Imports nothing of the other stages, and no TensorFlow at import time.
"""
