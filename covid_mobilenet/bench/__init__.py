"""The speed and memory benchmark (``python -m covid_mobilenet.benchmark``): every figure measured side by side
in one run, written to ``results/bench.json`` (``cli``); the input pipeline and training speed
(``throughput``), the fast sweep against end-to-end training and the full-size memory check (``sweeps``), and
int8 against float32 LiteRT (``quantization``).

Beside the sweep at the top of the house: may import every stage below it, never the sweep.
"""
