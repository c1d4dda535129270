"""slcodec.torch: views and labels through a real DataLoader with workers, losses, relabeling, the example."""
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import slcodec
from slcodec.augment import record as A
from slcodec.augment.views import build_views, hflip, mix, relabel, resized_crop
from slcodec.torch import LabelCollate, LabelDataset, LabelDecoder, kl_div_loss, soft_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load_example():
    spec = importlib.util.spec_from_file_location("train_student", os.path.join(ROOT, "examples", "train_student.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _constant_images(n, h=20, w=24):
    """Image i is the constant 10*i: any crop/resize/flip of it identifies i."""
    return (torch.arange(n, dtype=torch.float32) * 10).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()


# --------------------------------------------------------------------------- applying parameters
def test_resized_crop_flip_and_mix_helpers():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand((2, 3, 30, 40), generator=g)
    out = resized_crop(imgs, [2, 0], [5, 0], [10, 30], [20, 40], (16, 16))
    ref0 = F.interpolate(imgs[:1, :, 2:12, 5:25], size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(out[0], ref0[0])
    assert out.shape == (2, 3, 16, 16)
    ragged = resized_crop([imgs[0], imgs[1, :, :20, :]], [0, 0], [0, 0], [30, 20], [40, 40], 30)  # mixed sizes
    assert ragged.shape == (2, 3, 30, 30)
    with pytest.raises(ValueError):
        resized_crop(imgs, [25], [0], [10], [10], 8)
    f = hflip(out, [True, False])
    assert torch.equal(f[0], out[0].flip(-1)) and torch.equal(f[1], out[1])
    a, b = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    m = mix(a, b, [A.MIX_MIXUP, A.MIX_CUTMIX], [0.25, 0.5], [0, 2], [0, 1], [0, 3], [0, 4])
    assert torch.allclose(m[0], torch.full((3, 8, 8), 0.75))
    assert m[1].sum() == 3 * 3 * 4 and m[1, :, 2:5, 1:5].min() == 1


def test_build_views_follow_parameters():
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand((6, 3, 30, 40), generator=g)
    p = A.Policy(size=(12, 16), cutmix_alpha=1.0, mixup_alpha=0.5)
    img, aug = np.array([0, 3, 5, 5, 1]), np.array([0, 1, 2, 7, 4])
    views = build_views(imgs, img, aug, p, seed=9)
    v = A.view_params(9, img, aug, p, (30, 40), 6)
    for j in range(len(img)):
        own = resized_crop(imgs[[img[j]]], [v["top"][j]], [v["left"][j]], [v["height"][j]], [v["width"][j]], (12, 16))
        own = hflip(own, [v["flip"][j]])
        par = resized_crop(imgs[[v["partner"][j]]], [v["partner_top"][j]], [v["partner_left"][j]],
                           [v["partner_height"][j]], [v["partner_width"][j]], (12, 16))
        par = hflip(par, [v["partner_flip"][j]])
        exp = mix(own, par, v["mix"][j:j + 1], v["lam"][j:j + 1], v["cut_top"][j:j + 1], v["cut_left"][j:j + 1],
                  v["cut_height"][j:j + 1], v["cut_width"][j:j + 1])
        assert torch.allclose(views[j], exp[0], atol=1e-6)
    assert (v["mix"] > 0).any()
    # a map-style dataset of (image, target) tuples gives the same views as the tensor
    ds = [(imgs[i], i) for i in range(6)]
    assert torch.equal(build_views(ds, img, aug, p, seed=9), views)


def test_relabel_yields_labels_in_view_order():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    imgs = torch.rand((3, 3, 20, 20))
    p = A.Policy(size=8, mixup_alpha=1.0)
    batches = list(relabel(teacher, imgs, p, seed=4, augs_per_image=4, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    got = torch.cat(batches)
    for i in range(3):
        for a in range(4):
            with torch.no_grad():
                exp = teacher(build_views(imgs, [i], [a], p, seed=4))[0]
            assert torch.allclose(got[i * 4 + a], exp, atol=1e-6)


# --------------------------------------------------------------------------- dataset + loader
@pytest.fixture
def seeded_file(tmp_path, real_labels):
    path = str(tmp_path / "labels.vqsl")
    policy = A.Policy(size=(10, 12))                      # no mixing: each view still identifies its image
    slcodec.encode(real_labels, path, codec="fp16", batch_size=64, augment=A.augment_record(77, policy))
    return path, policy


def test_loader_with_workers_delivers_the_right_labels(seeded_file, real_labels, one_thread):
    path, policy = seeded_file
    data = LabelDataset(_constant_images(8), path)
    assert (data.seed, data.policy, data.augs_per_image, len(data)) == (77, policy, 64, 8)
    collate = LabelCollate(path, as_="probs", temperature=3.0)
    collate.decoder(np.array([0]))                        # open in the parent: workers must reopen after fork
    loader = DataLoader(data, batch_size=5, shuffle=True, num_workers=2, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    with slcodec.open(path) as reader:
        for epoch in (0, 1, 65):
            data.set_epoch(epoch)
            seen = []
            for views, labels, idx in loader:
                assert views.shape[1:] == (3, 10, 12)
                image = (views.mean(dim=(1, 2, 3)) / 10).round().long()
                assert torch.equal(idx, image * 64 + epoch % 64)
                assert torch.equal(labels, reader.decode(idx.numpy(), as_="probs", temperature=3.0))
                assert torch.allclose(labels, torch.softmax(torch.from_numpy(
                    real_labels.reshape(-1, 1000)[idx.numpy()]).float() / 3.0, dim=1))
                seen += image.tolist()
            assert sorted(seen) == list(range(8))


def _noisy_constant_images(n, h=20, w=24):
    """Image i is 10*i plus noise in [0, 1): a view's mean tells its image, its pixels tell its crop."""
    noise = torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(5))
    return _constant_images(n, h, w) + noise


@pytest.mark.parametrize("persistent,context", [(False, "fork"), (True, "fork"), (True, "spawn")])
def test_set_epoch_reaches_the_loader_workers(seeded_file, one_thread, persistent, context):
    path, policy = seeded_file
    imgs = _noisy_constant_images(8)
    data = LabelDataset(imgs, path)
    epochs = (0, 1, 2, 65)
    expected = {e % 64: build_views(imgs, np.arange(8), e % 64, policy, 77) for e in epochs}
    # the views of different epochs differ, so a worker stuck at epoch 0 cannot pass
    assert all((expected[1][i] - expected[0][i]).abs().max() > 0.05 for i in range(8))
    loader = DataLoader(data, batch_size=3, shuffle=True, num_workers=2, persistent_workers=persistent,
                        multiprocessing_context=context, generator=torch.Generator().manual_seed(1))
    for epoch in epochs:
        data.set_epoch(epoch)
        seen = []
        for views, idx in loader:
            for view, label in zip(views, idx.tolist()):
                image = int(view.mean() // 10)
                assert label == image * 64 + epoch % 64, (epoch, image, label)
                assert torch.allclose(view, expected[epoch % 64][image], atol=1e-5), (epoch, image)
                seen.append(image)
        assert sorted(seen) == list(range(8))
    assert data.epoch == 65
    copy = pickle.loads(pickle.dumps(data))                               # a plain pickle copies the epoch
    copy.set_epoch(3)
    assert (copy.epoch, data.epoch) == (3, 65)


def test_view_fn_through_persistent_workers(unseeded_file, one_thread):
    imgs = _noisy_constant_images(8, 16, 16)
    data = LabelDataset(imgs, unseeded_file, view_fn=_corner_view)
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(2))
    for epoch in (0, 1, 7):
        data.set_epoch(epoch)
        seen = []
        for views, idx in loader:
            for view, label in zip(views, idx.tolist()):
                image = label // 6
                assert label % 6 == epoch % 6
                assert torch.equal(view, _corner_view(imgs[image], image, epoch % 6))
                seen.append(image)
        assert sorted(seen) == list(range(8))


def test_dataset_views_and_indices(seeded_file):
    path, policy = seeded_file
    imgs = torch.rand((8, 3, 20, 24), generator=torch.Generator().manual_seed(2))
    data = LabelDataset(imgs, path)
    view, idx = data[(3, 5)]                               # (epoch, image) tuples work without set_epoch
    assert idx == 5 * 64 + 3
    assert torch.equal(view, build_views(imgs, [5], [3], policy, 77)[0])
    data.set_epoch(67)
    assert data[5][1] == 5 * 64 + 3 and torch.equal(data[5][0], view)
    assert data.label_index(67, [0, 7]).tolist() == [3, 7 * 64 + 3]
    plain = LabelDataset(imgs, path, augment=False, transform=lambda t: t * 2)
    assert torch.equal(plain[1][0], imgs[1] * 2)
    pickle.loads(pickle.dumps(data))
    # a sampler of (epoch, image) tuples selects views through a DataLoader without set_epoch
    views, idx = next(iter(DataLoader(data, batch_size=3, sampler=[(3, 5), (70, 0), (3, 2)])))
    assert idx.tolist() == [5 * 64 + 3, 0 * 64 + 6, 2 * 64 + 3] and data.epoch == 67
    assert torch.equal(views[0], view) and torch.equal(views[2], build_views(imgs, [2], [3], policy, 77)[0])
    with pytest.raises(ValueError, match="images"):
        LabelDataset(imgs[:7], path)
    with pytest.raises(ValueError, match="mismatch"):
        LabelDataset(imgs, path, seed=78)
    with pytest.raises(IndexError):
        data[8]


def _corner_view(image, image_index, view_index):
    """A user's view function: view a of an image is its a-th 4 x 4 diagonal corner, scaled by the image index."""
    return image[:, view_index:view_index + 4, view_index:view_index + 4].float() * (image_index + 1)


@pytest.fixture
def unseeded_file(tmp_path, real_labels):
    path = str(tmp_path / "plain.vqsl")
    slcodec.encode(real_labels[:, :6], path, codec="fp16")          # [8, 6, C] from a plain array: mode none
    return path


def test_file_without_seeded_views_is_refused(unseeded_file, tmp_path, real_labels):
    imgs = torch.rand((8, 3, 16, 16))
    with slcodec.open(unseeded_file) as r:
        assert r.container.read_msgpack("augment") == {"mode": "none"}
    # the raw image with the label of view a would be silently wrong: refused, naming the fix
    with pytest.raises(ValueError, match=r"plain\.vqsl: has no seeded augmentation record \(augment mode 'none'\)"
                                         r".*seed= and policy=.*view_fn=.*augment=False"):
        LabelDataset(imgs, unseeded_file)
    flat = str(tmp_path / "flat.vqsl")
    slcodec.encode(real_labels.reshape(-1, 1000)[:48], flat, codec="fp16")     # [N, C]
    with pytest.raises(ValueError, match="augs_per_image"):
        LabelDataset(imgs[:6], flat)
    with pytest.raises(ValueError, match="no seeded augmentation record"):
        LabelDataset(imgs[:6], flat, augs_per_image=8)
    explicit = str(tmp_path / "explicit.vqsl")
    slcodec.encode(real_labels, explicit, codec="fp16", augment={"mode": "explicit", "layout": "fkd", "fields": []})
    with pytest.raises(ValueError, match="explicit.vqsl: augment mode 'explicit' has no seeded parameters.*view_fn="):
        LabelDataset(imgs, explicit)


def test_file_without_seeded_views_with_an_explicit_source(unseeded_file):
    imgs = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    plain = LabelDataset(imgs, unseeded_file, augment=False)           # labels of the images as they are
    view, idx = plain[(9, 2)]
    assert view.dtype == torch.float32 and torch.equal(view, imgs[2].float()) and idx == 2 * 6 + 3
    assert plain.views == "the images as they are (augment=False)"
    p = A.Policy(size=8)
    aug = LabelDataset(imgs, unseeded_file, policy=p, seed=5)           # labels made with this seeded policy
    assert torch.equal(aug[(1, 2)][0], build_views(imgs, [2], [1], p, 5)[0]) and aug[(1, 2)][1] == 2 * 6 + 1
    assert "caller (seed 5" in aug.views
    own = LabelDataset(imgs, unseeded_file, view_fn=_corner_view)
    assert own.views.endswith("_corner_view") and own.view_fn is _corner_view
    assert pickle.loads(pickle.dumps(own)).view_fn is _corner_view         # as spawned workers receive it
    for epoch, i in ((0, 0), (4, 7), (13, 3)):
        view, idx = own[(epoch, i)]
        assert torch.equal(view, _corner_view(imgs[i], i, epoch % 6)) and idx == i * 6 + epoch % 6
    with pytest.raises(ValueError, match="both seed and policy"):
        LabelDataset(imgs, unseeded_file, seed=5)
    with pytest.raises(ValueError, match="either view_fn or seed and policy"):
        LabelDataset(imgs, unseeded_file, view_fn=_corner_view, seed=5, policy=p)
    with pytest.raises(ValueError, match="takes no seed, policy or view_fn"):
        LabelDataset(imgs, unseeded_file, augment=False, view_fn=_corner_view)
    with pytest.raises(ValueError, match="view_fn must be callable"):
        LabelDataset(imgs, unseeded_file, view_fn="crop")


def test_view_fn_is_refused_for_a_seeded_file(seeded_file):
    imgs = torch.rand((8, 3, 20, 24))
    with pytest.raises(ValueError, match="seeded augmentation record; a view_fn would replace them"):
        LabelDataset(imgs, seeded_file[0], view_fn=_corner_view)


def test_image_layout_and_dtype_are_checked(seeded_file):
    path, policy = seeded_file
    hwc = np.random.default_rng(0).integers(0, 256, (8, 20, 24, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \[20, 24, 3\], which looks channels-last"):
        LabelDataset(hwc, path)                                        # a numpy batch straight from PIL images
    with pytest.raises(ValueError, match="looks channels-last"):
        LabelDataset([torch.from_numpy(im) for im in hwc], path)          # a dataset of [H, W, C] items
    with pytest.raises(ValueError, match=r"expected \[N, C, H, W\]"):
        LabelDataset(torch.rand(8, 20, 24), path)
    with pytest.raises(ValueError, match="dtype torch.bool"):
        LabelDataset(torch.zeros(8, 3, 20, 24, dtype=torch.bool), path)
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))               # uint8 [N, C, H, W] numpy: accepted
    data = LabelDataset(chw, path)
    view, _ = data[(2, 5)]
    assert view.dtype == torch.float32 and view.max() > 1                # values unchanged (0..255), not rescaled
    assert torch.equal(view, build_views(torch.from_numpy(chw).float(), [5], [2], policy, 77)[0])
    ragged = [torch.rand(3, 20 + i, 24) for i in range(8)]                # a dataset of differently sized images
    assert LabelDataset(ragged, path)[(0, 3)][0].shape == (3, 10, 12)
    pairs = [(torch.from_numpy(chw[i]), i) for i in range(8)]             # (image, target) items
    assert torch.equal(LabelDataset(pairs, path)[(2, 5)][0], view)


def test_decoder_is_lazy_fork_safe_and_picklable(seeded_file):
    path, _ = seeded_file
    dec = LabelDecoder(path, as_="logits")
    assert dec._lazy._reader is None                      # nothing opened until used
    first = dec(torch.tensor([1, 500, 3]))
    r1 = dec.reader
    assert dec.reader is r1
    dec._lazy._pid = -1                                   # as seen from a forked child
    assert dec.reader is not r1 and torch.equal(dec(torch.tensor([1, 500, 3])), first)
    clone = pickle.loads(pickle.dumps(dec))
    assert clone._lazy._reader is None and torch.equal(clone(np.array([1, 500, 3])), first)
    dec.close()
    clone.close()


# --------------------------------------------------------------------------- losses
def test_losses():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g) * 3
    T = 4.0
    p = torch.softmax(t / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    manual = (p * (p.log() - log_q)).sum(1).mean() * T * T
    for kind, teacher in (("probs", p), ("log_probs", torch.log_softmax(t / T, 1)), ("logits", t)):
        assert torch.allclose(kl_div_loss(s, teacher, T, kind=kind), manual, rtol=1e-5)
    assert torch.allclose(kl_div_loss(s, p, T, scale=False) * T * T, manual, rtol=1e-5)
    entropy = -(p * p.log()).sum(1).mean() * T * T
    assert torch.allclose(soft_cross_entropy(s, p, T), manual + entropy, rtol=1e-5)
    assert torch.allclose(soft_cross_entropy(s, t, T, kind="logits"), manual + entropy, rtol=1e-5)
    assert kl_div_loss(t, torch.softmax(t, 1), 1.0).abs() < 1e-6
    with pytest.raises(ValueError):
        kl_div_loss(s, p, T, kind="probabilities")


# --------------------------------------------------------------------------- the example, short
def test_example_decoded_labels_train_like_the_originals(tmp_path, one_thread):
    ex = _load_example()
    res = ex.run(epochs=3, codec="fp16", mix="cutmix", workers=2, out_dir=str(tmp_path), log=lambda *a: None)
    orig, dec = np.array(res["original"]), np.array(res["decoded"])
    assert len(orig) == 3 and np.isfinite(orig).all()
    # fp16 of an FP16 source is lossless: the same labels, so the same curve up to float noise
    assert np.allclose(dec, orig, rtol=1e-6, atol=0)
    # ...and that tolerance is meaningful: labels of the wrong views (aug + 1) move the curve far more
    data = LabelDataset(res["images"], res["path"])
    rows = res["logits"].reshape(-1, 1000)

    def shifted(idx):
        wrong = (idx // 64) * 64 + (idx % 64 + 1) % 64
        return torch.softmax(torch.from_numpy(rows[wrong.numpy()]).float() / 4.0, dim=1)
    shifted.rows = rows
    other = np.array(ex.train(data, shifted, epochs=3, temperature=4.0, workers=0))
    assert np.max(np.abs(other - orig) / orig) > 1e-3
