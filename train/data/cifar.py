"""CIFAR-10 and CIFAR-100 from TFDS."""

from larq_nobn.train.data.augment import pad_crop_maps
from larq_nobn.train.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from larq_nobn.train.data.source import Request, Source, tfds_load, train_split

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def stats(name: str, normalization: str = "dataset") -> tuple[tuple[float, ...], ...]:
    """(mean, std) of CIFAR `name`'s normalization: "dataset" (its own statistics) or
    "imagenet" (ImageNet's, what A&B BNN trained and released its CIFAR models with)."""
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalization != "dataset":
        raise ValueError(f"`normalization` must be 'dataset' or 'imagenet', got {normalization!r}")
    return CIFAR_STATS[name]


def source(request: Request) -> Source:
    """`request.name`'s splits, per-channel normalization (`request.normalization`), 4-pixel
    crops of the padded image (`request.padding_mode`) and flips."""
    name = request.name
    mean, std = stats(name, request.normalization)
    train = tfds_load(name, train_split(request.train_subset), request.data_dir)
    test = tfds_load(name, "test", request.data_dir)
    size = request.image_size or 32
    train_map, test_map = pad_crop_maps(size, mean, std, padding_mode=request.padding_mode)
    return Source.from_datasets(
        train,
        test,
        train_map=train_map,
        test_map=test_map,
        num_classes=100 if name == "cifar100" else 10,
        image_size=size,
        mean=mean,
        std=std,
    )
