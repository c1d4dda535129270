"""Write the golden files of spec/golden/ (once: existing files are never overwritten).

    python spec/make_golden.py            # writes the golden files that do not exist yet

Inputs come from the committed real-teacher fixture (slcodec/data/lite0_8x64_fp16.npy).
Each golden file (or sharded set: manifest + shards) is released with the exact decoded
labels it must give (NAME.expected.npy) and an entry in MANIFEST.json saying how it is decoded and with what tolerance.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import slcodec  # noqa: E402

GOLDEN = os.path.join(HERE, "golden")
FIXTURE = os.path.join(os.path.dirname(HERE), "slcodec", "data", "lite0_8x64_fp16.npy")


def cases():
    logits16 = np.load(FIXTURE)[:2, :3]                                   # [2, 3, 1000] FP16 logits
    probs32 = torch.softmax(torch.from_numpy(logits16.astype(np.float32)), dim=-1).numpy()
    # name: (labels, codec, codec options, decode as, absolute tolerance, format version[, encode options])
    return {
        "v1.0-fp32-probs": (probs32, "fp32", {}, "probs", 0.0, "1.0"),
        "v1.0-fp16-logits": (logits16, "fp16", {}, "logits", 0.0, "1.0"),
        "v1.0-topk5-logits": (logits16, "topk", {"k": 5}, "probs", 1e-6, "1.0"),
        # a tiny learned codec: decoding is float32 arithmetic on stored FP16 weights, so the
        # expected probabilities hold to a tolerance across machines (the indices are exact)
        "v1.0-vq-tiny-logits": (np.load(FIXTURE)[:4, :16], "vq",
                                {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                 "train_batch": 64}, "probs", 1e-4, "1.0"),
        # format 1.1: a sharded set, the manifest and 2 shards of 3 labels (one image's views each)
        "v1.1-topk5-sharded": (logits16, "topk", {"k": 5}, "probs", 1e-6, "1.1", {"shard_rows": 3}),
        # format 1.2: the sparse codec (top-k with one-byte log-probabilities and a 4-bit tail prior)
        "v1.2-sparse-k5-logits": (logits16, "sparse", {"k": 5}, "probs", 1e-6, "1.2"),
        # format 1.3: sparse with a prior over 32 listed classes (ids + 33 levels; the rest share one)
        "v1.3-sparse-k2-prior-classes-logits": (logits16, "sparse", {"k": 2, "prior_classes": 32}, "probs", 1e-6,
                                                "1.3"),
        # format 1.4: sq (3-bit levels of companded log-probabilities, one byte each; 8 fitted centroids)
        "v1.4-sq-b3-logits": (logits16, "sq", {"bits_per_class": 3}, "probs", 1e-6, "1.4"),
        # format 1.4: imgprior (each image's mean log-probabilities, uint8 companded, + 4 residuals per view)
        "v1.4-imgprior-k4-logits": (logits16, "imgprior", {"residual_k": 4}, "probs", 1e-6, "1.4"),
        # ... and with no residuals: each view is its image's mean label (one label needs the top-1 fix)
        "v1.4-imgprior-k0-logits": (logits16, "imgprior", {"residual_k": 0}, "probs", 1e-6, "1.4"),
        # format 1.2: vq with image_bias (a per-image [images, C] prior added to the decoder's logits)
        "v1.2-vq-image-bias-logits": (np.load(FIXTURE)[:4, :16], "vq",
                                      {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                       "train_batch": 64, "image_bias": "on"}, "probs", 1e-4, "1.2"),
        # format 1.5: vq with int8 weights and codebooks (one float32 scale per output channel,
        # float16 biases); decoding is float32 arithmetic on the dequantised weights
        "v1.5-vq-int8-logits": (np.load(FIXTURE)[:4, :16], "vq",
                                {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                 "train_batch": 64, "param_dtype": "int8"}, "probs", 1e-4, "1.5"),
        # format 1.7: vq with the sparse image prior (per image its 8 most likely classes at uint8 levels,
        # the other classes at an FP16 profile of the set plus one FP16 offset per image)
        "v1.7-vq-sparse-prior-logits": (np.load(FIXTURE)[:4, :16], "vq",
                                        {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                         "train_batch": 64, "image_bias": "sparse", "image_bias_k": 8}, "probs", 1e-4,
                                        "1.7"),
        # format 1.6: vq whose code indices are rans-coded (a frequency table per stream and per-image
        # adaptive counts: 4 images of 64 views); decoding is the vq decoder on the exact indices
        "v1.6-vq-rans-logits": (np.load(FIXTURE)[:4], "vq",
                                {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                 "train_batch": 64, "param_dtype": "float16", "image_bias": "off"}, "probs", 1e-4,
                                "1.6"),
        # format 1.8: vq with a per-view residual (4 classes each: ids, uint8 steps from the decoder's
        # log-probabilities, and a tail step); decoding is the vq decoder, a log-softmax and additions
        "v1.8-vq-residual-logits": (np.load(FIXTURE)[:4, :16], "vq",
                                    {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60,
                                     "train_batch": 64, "residual_k": 4}, "probs", 1e-4, "1.8"),
    }


def main():
    os.makedirs(GOLDEN, exist_ok=True)
    manifest_path = os.path.join(GOLDEN, "MANIFEST.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    only = set(sys.argv[1:])
    for name, (labels, codec, opts, as_, atol, version, *more) in cases().items():
        enc = more[0] if more else {}
        if only and name not in only:
            continue
        path = os.path.join(GOLDEN, name + ".vqsl")
        if os.path.exists(path) or name in manifest:
            print(f"{name}: released, left as it is")
            continue
        slcodec.encode(labels, path, codec=codec, seed=0,
                       provenance={"teacher": "EfficientNet-Lite0 (ImageNet-1K)", "golden": name}, **enc, **opts)
        with slcodec.open(path) as r:
            expected = r.decode(None, as_=as_).numpy()
            shards = [e["file"] for e in getattr(r, "entries", [])]
        np.save(os.path.join(GOLDEN, name + ".expected.npy"), expected, allow_pickle=False)
        manifest[name] = {"file": name + ".vqsl", "expected": name + ".expected.npy", "codec": codec,
                          "as": as_, "atol": atol, "format_version": version}
        if shards:  # a sharded set: the manifest is "file", its shards lie beside it
            manifest[name]["shards"] = shards
        print(f"{name}: written ({os.path.getsize(path)} bytes)")
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
