"""Probe: the crafted hostile inputs of issue 12 points 2, 3, 6 and 7 (codec configs, non-finite
values, huge C) against the slcodec checkout in the current directory: what open + decode do
(exception and rule, or how many decoded values are not finite), `slcodec verify`'s exit code,
the time and the peak RSS.

    cd REPO && python benchmarks/probe_codec_configs.py [CASE-PREFIX ...]

To see a tree from before the fixes (commit 4bab51a), under a memory limit:
    git archive 4bab51a | tar -x -C /tmp/old && cp benchmarks/probe_codec_configs.py /tmp/old/
    cd /tmp/old && (ulimit -v 6000000; python probe_codec_configs.py)
(case 3 "decoder_layers" there ran 69 s to a MemoryError under a 3 GB limit).
"""
import io, math, os, resource, sys, tempfile, time, contextlib
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import numpy as np
import slcodec
from slcodec.cli import main as cli
try:
    from slcodec.format.container import Container, ContainerWriter, StreamBuilder
except ImportError:          # trees from before the package layout of issue 13
    from slcodec.container import Container, ContainerWriter, StreamBuilder
from craft import rewrite_file, parse, rebuild
G = "spec/golden/"
VQ = G + "v1.0-vq-tiny-logits.vqsl"
tmp = tempfile.mkdtemp()

def write_file(path, codec_id, config, shape, streams, params=None):
    with ContainerWriter(path, verify=False) as w:
        for n, a in (params or {}).items(): w.add_array("params/" + n, a)
        for n, a in streams.items():
            b = StreamBuilder(a.dtype.name, a.shape[1]); b.append(a); w.add_stream("streams/" + n, b)
        w.commit({"labels": {"count": int(np.prod(shape[:-1])), "shape": list(shape), "classes": shape[-1],
                             "source_kind": "logits"}, "codec": {"id": codec_id, "config": config}})
    return path

def rw(name, **kw):
    p = os.path.join(tmp, name); rewrite_file(VQ, p, minor=0, **kw); return p

def cfg():
    with Container.open(VQ) as c: return dict(c.header["codec"]["config"])

def bomb():
    H, C = 16384, 10; f16 = np.float16
    c = dict(cfg(), codes=1, codebook_size=65536, code_dim=1, hidden=H, decoder_layers=0)
    params = {"codebooks": np.zeros((1, 65536, 1), f16), "w_in": np.zeros((1, H), f16), "b_in": np.zeros(H, f16),
              "w_out": np.zeros((H, C), f16), "b_out": np.zeros(C, f16)}
    return write_file(os.path.join(tmp, "bomb.vqsl"), "vq", c, [1, C],
                      {"codes": np.zeros((1, 1), np.uint16), "top1": np.zeros((1, 1), np.uint16)}, params)

def overflow():
    with Container.open(VQ) as c:
        params = {n[7:]: np.abs(c.read_array(n).astype(np.float32)) * np.float32(1e12) for n in c.sections if n.startswith("params/")}
    return rw("overflow.vqsl", params=params, config={"param_dtype": "float32"})

def nan_fp32():
    v = np.zeros((3, 10), np.float32); v[1, 4] = np.nan
    return write_file(os.path.join(tmp, "nan.vqsl"), "fp32", {}, [3, 10], {"values": v})

def wide_topk():
    p = write_file(os.path.join(tmp, "narrow.vqsl"), "topk", {"k": 1}, [1, 1000],
                   {"ids": np.zeros((1, 1), np.uint32), "values": np.ones((1, 1), np.float16)})
    data = open(p, "rb").read(); _, h = parse(data)
    h["labels"].update(classes=2**28, shape=[1, 2**28])
    q = os.path.join(tmp, "wide.vqsl"); open(q, "wb").write(rebuild(data, header=h)); return q

CASES = {
    "2 vq bits=inf": lambda: rw("bits.vqsl", config={"bits": math.inf, "codes": None, "codebook_size": None}),
    "3 vq decoder_layers=1e9": lambda: rw("layers.vqsl", config={"decoder_layers": 10**9}),
    "3 vq 4 GiB code table": bomb,
    "6 vq margin=inf": lambda: rw("margin.vqsl", config={"margin": math.inf}),
    "6 vq weights overflow f32": overflow,
    "6 fp32 NaN value": nan_fp32,
    "7 topk C=2**28": wide_topk,
}
only = sys.argv[1:] or list(CASES)
for name in CASES:
    if not any(name.startswith(o) for o in only): continue
    path = CASES[name]()
    t = time.perf_counter()
    try:
        with slcodec.open(path) as r:
            x = r.decode(None).numpy()
        res = f"decoded, {int((~np.isfinite(x)).sum())} non-finite of {x.size}"
    except Exception as e:
        res = f"{type(e).__name__}" + (f"(rule={e.rule})" if hasattr(e, "rule") else "") + f": {str(e)[:90]}"
    dt = time.perf_counter() - t
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try: rc = cli(["verify", path])
        except SystemExit as e: rc = e.code
        except BaseException as e: rc = f"raised {type(e).__name__}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:28s} | open+decode: {res} ({dt:.2f} s) | verify rc={rc} | peak RSS so far {peak:.0f} MB", flush=True)
