"""FID of the same two image sets under Fashion-MNIST domain classifiers trained on 1 and on 2
threads: what the caller's thread count did to the scores before the classifier was pinned to
one thread (docs/ava.md, "Feature extractor"). Trains two classifiers (minutes each):

    OMP_NUM_THREADS=2 python experiments/classifier_threads.py
"""
import time

import torch

from autovae.data import load_data
from autovae.quality import features as F
from autovae.quality import sample_quality

data = load_data("fashion-mnist")
real = data.test[:5000]
g = torch.Generator().manual_seed(0)
fake = (data.train[:5000] + 0.15 * torch.randn(data.train[:5000].shape, generator=g)).clamp(0, 1)
num_classes = len(data.classes)
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = time.time()
    # _train_classifier is the training without the one-thread pin (the old behaviour)
    model, acc = F._train_classifier(data, data.train, data.train_labels, num_classes, 2, 0,
                                     128, 3e-3)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {"dataset": "fashion-mnist", "sha256": F._weights_sha256(state), "accuracy": acc}
    ext = F.DomainFeatures(model.cpu(), meta)
    torch.set_num_threads(1)
    s = sample_quality(real, fake, ext, kid_subset_size=1000)
    print(f"trained on {threads} thread(s) in {time.time()-t:.0f}s: {ext.name} acc {acc:.4f} "
          f"FID {s['fid']:.2f} KID {s['kid_mean']:.2f} IS {s['is_mean']:.3f}", flush=True)
