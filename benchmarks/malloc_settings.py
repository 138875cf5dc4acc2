"""glibc's malloc defaults against `larq_nobn.reuse_freed_memory`, side by side.

Each measurement runs in its own process (malloc settings hold for a whole process), the
two settings alternating: one elementwise pass over a 3x3x1024x1024 kernel (ReActNet-A's
largest), and a training step of a zoo model (Keras' train function on a fixed batch).

    python benchmarks/malloc_settings.py --model reactnet_a_nobn --config 32:32 --rounds 3
"""

import argparse
import os
import re
import subprocess
import sys

import common

from larq_nobn.train.process import GLIBC_VARIABLES

CHILD = r"""
import sys, time
sys.path.insert(0, {benchmarks!r})
import common
import numpy as np
import tensorflow as tf

kernel = tf.constant(np.ones((3 * 3 * 1024, 1024), np.float32))
double = tf.function(lambda x: x * 2.0)
double(kernel).numpy()
passes = []
for _ in range(9):
    start = time.perf_counter()
    double(kernel).numpy()
    passes.append(time.perf_counter() - start)
trainer = common.Trainer({model!r}, stage=2, input_size={size}, batch_size={batch},
                         num_classes=10)
trainer.warm_up()
steps = []
for _ in range(5):
    start = time.perf_counter()
    trainer()
    steps.append(time.perf_counter() - start)
pass_ms, step_ms = 1e3 * np.median(passes), 1e3 * np.median(steps)
print(f"RESULT {{common.MALLOC_REUSE}} {{pass_ms:.1f}} {{step_ms:.0f}}")
"""

SETTINGS = {
    "glibc defaults": {"MALLOC_MMAP_MAX_": "65536"},  # glibc's own default value
    "reuse freed memory": {},
}


def measure(model: str, size: int, batch: int, env_extra: dict) -> tuple[float, float]:
    code = CHILD.format(
        benchmarks=os.path.dirname(os.path.abspath(__file__)), model=model, size=size, batch=batch
    )
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_VARIABLES}
    env.update(env_extra)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    (line,) = re.findall(r"^RESULT .*$", result.stdout, re.M)
    _, _, pass_ms, step_ms = line.split()
    return float(pass_ms), float(step_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reactnet_a_nobn")
    parser.add_argument("--config", default="32:32", help="input size:batch size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size, batch = (int(v) for v in args.config.split(":"))
    print(common.machine_description().replace("malloc reuses freed memory; ", ""))
    results = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, env in SETTINGS.items():
            results[name].append(measure(args.model, size, batch, env))
    print(f"\n{args.model} {args.config}, stage 2, medians over {args.rounds} processes each")
    print("| malloc | pass over 38 MB, ms | training step, ms |")
    print("|---|---|---|")
    for name, values in results.items():
        passes = common.median([p for p, _ in values])
        steps = common.median([s for _, s in values])
        print(f"| {name} | {passes:.1f} | {steps:.0f} |")


if __name__ == "__main__":
    main()
