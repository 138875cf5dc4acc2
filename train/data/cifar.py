"""CIFAR-10 and CIFAR-100 from TFDS."""

from larq_nobn.train.data.augment import pad_crop_maps
from larq_nobn.train.data.source import Request, Source, tfds_load, train_split

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def source(request: Request) -> Source:
    """`request.name`'s splits, per-channel normalization, 4-pixel crops and flips."""
    name = request.name
    train = tfds_load(name, train_split(request.train_subset), request.data_dir)
    test = tfds_load(name, "test", request.data_dir)
    mean, std = CIFAR_STATS[name]
    size = request.image_size or 32
    train_map, test_map = pad_crop_maps(size, mean, std)
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
