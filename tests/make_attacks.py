"""Write the hostile-file corpus tests/attacks/ from the crafted cases of test_attacks.py.

    python tests/make_attacks.py

One file per case, named RULE--CASE.vqsl; tests/test_attacks.py::test_corpus_file_rejected
checks every committed file against the rule in its name, so the corpus keeps being rejected
even if the crafting code changes. Existing files are left as they are.
"""
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_attacks import CASES  # noqa: E402

OUT = os.path.join(HERE, "attacks")


def main():
    os.makedirs(OUT, exist_ok=True)
    written = 0
    with tempfile.TemporaryDirectory() as tmp:
        for case, (rule, make) in sorted(CASES.items()):
            path = os.path.join(OUT, f"{rule}--{case}.vqsl")
            if os.path.exists(path):
                continue
            try:
                data = make(tmp)
            except TypeError:
                data = make()
            with open(path, "wb") as f:
                f.write(data)
            written += 1
    print(f"{written} files written to {OUT}")


if __name__ == "__main__":
    main()
