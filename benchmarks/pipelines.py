"""The data-pipeline comparison: ours (mobilenetv3.data.pipeline.create_dataset), MindSpore's C++ pipeline
twice (to normalised float32 CHW as its docs build it, and stopped at uint8 HWC, where ours stops in
training) and a PyTorch DataLoader with the same transforms (TorchImages), train and eval, at 1 to
num_parallel_workers workers, each timed alone in a fresh process (time_pipeline) over 500x375 JPEGs cut
from photos found on this machine (write_benchmark_jpegs), with the CPU time per image and the peak PSS of
the process and its workers. measure_data_pipeline returns the report's "data_pipeline".
"""
import glob
import os
import tempfile
from pathlib import Path
from typing import List, Tuple

import numpy as np

from benchmarks.processes import in_child_process, timed_steps


SOURCE_IMAGE_SIZE = (500, 375)  # a typical ImageNet photo, width x height
# Camera photos (720x477) that rustup's rust-docs component ships; the benchmark JPEGs are cut from them.
PHOTO_GLOBS = ("~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jpg",
               "~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jpeg")
PIPELINES = ("ours", "mindspore", "mindspore_uint8", "torch")
TRANSFORMS = ("train", "eval")


def find_photos() -> List[Path]:
    """Photos found on this machine (PHOTO_GLOBS), one of each file name."""
    found = {}
    for pattern in PHOTO_GLOBS:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            if os.path.getsize(path) >= 50_000:
                found.setdefault(Path(path).name, Path(path))
    return list(found.values())


def write_benchmark_jpegs(root: Path, count: int, seed: int) -> dict:
    """root/class_<c>/<i>.jpg: `count` 500x375 JPEGs at quality 90, each a random crop (60-100% of the
    width) of a photo found on this machine, flipped at random; smooth noisy synthetic images (lighter
    to decode) where none is found. Returns what they were made from and their mean file size."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    width, height = SOURCE_IMAGE_SIZE
    photos = [Image.open(path).convert("RGB") for path in find_photos()]
    sizes = []
    for i in range(count):
        if photos:
            photo = photos[i % len(photos)]
            w = min(int(photo.width * rng.uniform(0.6, 1.0)), photo.height * width // height)
            h = w * height // width
            left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
            image = photo.resize((width, height), Image.BICUBIC, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height),
                                                                                              Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 8, (height, width, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = root / f"class_{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        sizes.append(path.stat().st_size)
    source = (f"cut from {len(photos)} photos ({', '.join(p.name for p in find_photos())})" if photos
              else "synthetic (no photos found: lighter to decode than photos)")
    return {"source": source, "mean_file_kb": float(np.mean(sizes)) / 1000}


class TorchImages:
    """The same transforms for a PyTorch DataLoader (torchvision is not needed): Pillow decode; train:
    random-resized crop (data.transforms.random_resized_crop_box) and flip, resized by Pillow; eval: shorter
    side to `short_side`, centre crop; then normalised CHW float32."""

    def __init__(self, samples, training, size, short_side, passes, seed, mean, std):
        self.samples, self.training, self.size, self.short_side = samples, training, size, short_side
        self.passes, self.seed, self.mean, self.std = passes, seed, np.float32(mean), np.float32(std)

    def __len__(self):
        return len(self.samples) * self.passes

    def __getitem__(self, index):
        from PIL import Image
        from mobilenetv3.data.transforms import random_resized_crop_box
        path, label = self.samples[index % len(self.samples)]
        with Image.open(path) as image:
            image = image.convert("RGB")
        if self.training:
            rng = np.random.default_rng([self.seed, index])
            top, left, h, w = random_resized_crop_box(image.height, image.width, rng)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            scale = self.short_side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        pixels = (np.asarray(image, dtype=np.float32) / 255 - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32), label


def pipeline_batches(pipeline, transform, workers, root, settings, batch_size, passes):
    """An iterator over `passes` passes of batches of one pipeline over the JPEGs below `root`."""
    from mobilenetv3.data.folders import ImageFolder, scan_image_folder
    from mobilenetv3.data.pipeline import create_dataset
    from mobilenetv3.data.preprocessing import Preprocessing
    from mobilenetv3.data.transforms import Augmentation, normalize_batch
    preprocessing = Preprocessing(resize=settings.image_size)
    folder = scan_image_folder(Path(root))
    training = transform == "train"
    if pipeline == "ours":
        if training:  # uint8 batches: training normalises them on the device
            return create_dataset(folder, preprocessing, batch_size, workers, Augmentation(), settings.seed,
                                  repeats=passes).create_tuple_iterator(num_epochs=1, output_numpy=True)
        folder = ImageFolder(folder.root, folder.classes, folder.samples * passes)  # evaluation has no repeats
        batches = create_dataset(folder, preprocessing, batch_size, workers, seed=settings.seed).create_tuple_iterator(
            num_epochs=1, output_numpy=True)
        return ((normalize_batch(images, preprocessing), labels) for images, labels in batches)  # as evaluation does
    if pipeline.startswith("mindspore"):
        import mindspore.dataset as ds
        from mindspore.dataset import vision
        dataset = ds.ImageFolderDataset(str(root), num_parallel_workers=workers, shuffle=training)
        ops = ([vision.RandomCropDecodeResize(preprocessing.resize), vision.RandomHorizontalFlip()] if training else
               [vision.Decode(), vision.Resize(preprocessing.eval_short_side), vision.CenterCrop(preprocessing.resize)])
        if pipeline == "mindspore":
            ops += [vision.Normalize([255 * m for m in preprocessing.mean], [255 * s for s in preprocessing.std]),
                    vision.HWC2CHW()]
        dataset = dataset.map(ops, input_columns="image", num_parallel_workers=workers)
        return dataset.batch(batch_size, drop_remainder=True).repeat(passes).create_tuple_iterator(
            num_epochs=1, output_numpy=True)
    import torch
    torch.set_num_threads(1)
    images = TorchImages(folder.samples, training, preprocessing.resize, preprocessing.eval_short_side, passes,
                         settings.seed, preprocessing.mean, preprocessing.std)
    return iter(torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=training, num_workers=workers,
                                            drop_last=True))


def process_tree_usage() -> Tuple[float, float]:
    """(CPU seconds, proportional set size in MB) of this process and its children (the data workers)."""
    import psutil
    cpu, pss = 0.0, 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            cpu += times.user + times.system
            pss += process.memory_full_info().pss / 2 ** 20
        except psutil.Error:  # a worker that ended meanwhile
            pass
    return cpu, pss


def time_pipeline(pipeline, transform, workers, root, settings, batch_size) -> dict:
    """img/s of one pipeline alone: one warm-up pass over the folder, then one timed pass per window,
    with the CPU time per image and the peak PSS of the process and its workers."""
    images = len(list(Path(root).glob("*/*.jpg")))
    steps = images // batch_size
    batches = pipeline_batches(pipeline, transform, workers, root, settings, batch_size, settings.windows + 1)
    timed_steps(lambda: next(batches), steps)
    windows, cpu_ms, peak_pss = [], [], 0.0
    for _ in range(settings.windows):
        cpu_start = process_tree_usage()[0]
        seconds = sum(timed_steps(lambda: next(batches), steps))
        cpu_end, pss = process_tree_usage()
        windows.append(steps * batch_size / seconds)
        cpu_ms.append(1000 * (cpu_end - cpu_start) / (steps * batch_size))
        peak_pss = max(peak_pss, pss)
    return {"pipeline": pipeline, "transform": transform, "workers": workers, "img_per_s": float(np.median(windows)),
            "windows": windows, "cpu_ms_per_image": float(np.median(cpu_ms)), "peak_pss_mb": peak_pss}


def measure_data_pipeline(settings, log=print) -> dict:
    """Ours, MindSpore's C++ pipeline and a PyTorch DataLoader, train and eval transforms (--quick: train
    only), 1 to num_parallel_workers workers, each configuration in a fresh process; the three pipelines
    of a configuration run one after another, in turns reversed from one configuration to the next."""
    batch_size = 8 if settings.quick else 32
    report = {"batch_size": batch_size, "source_image_size": list(SOURCE_IMAGE_SIZE),
              "output_image_size": settings.image_size, "rows": [], "torch_reason": None}
    with tempfile.TemporaryDirectory(prefix="mobilenetv3_benchmark_") as tmp:
        report.update(write_benchmark_jpegs(Path(tmp), max(settings.data_images, 2 * batch_size), settings.seed))
        report["images"] = max(settings.data_images, 2 * batch_size)
        log(f"data pipeline: {report['images']} JPEGs {report['source']}, mean {report['mean_file_kb']:.0f} KB")
        turn = 0
        for transform in TRANSFORMS[:1] if settings.quick else TRANSFORMS:
            for workers in range(1, settings.num_parallel_workers + 1):
                pipelines = [p for p in PIPELINES if p != "torch" or report["torch_reason"] is None]
                for pipeline in pipelines if turn % 2 == 0 else pipelines[::-1]:
                    log(f"data pipeline: {pipeline}, {transform}, {workers} workers")
                    try:
                        report["rows"].append(in_child_process(time_pipeline, pipeline, transform, workers, tmp,
                                                               settings, batch_size))
                    except ImportError as err:
                        if pipeline != "torch":
                            raise
                        report["torch_reason"] = f"PyTorch is not importable ({err}): its DataLoader is left out"
                turn += 1
    return report
