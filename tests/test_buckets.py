"""Aspect-ratio buckets (trainer/buckets.py): photos keep their shape, batches their bucket."""

from PIL import Image

from trainer.buckets import BucketedPhotos, bucket_batches, bucket_sizes, fit, nearest_bucket


def test_bucket_sizes_hold_the_area_and_the_step():
    for resolution, step in ((64, 16), (512, 32), (1024, 64)):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        assert all(w * h <= resolution * resolution and w % step == 0 and h % step == 0 for w, h in sizes)
        assert all((h, w) in sizes for w, h in sizes)  # portrait for every landscape


def test_a_photo_goes_to_the_bucket_of_its_aspect_and_keeps_it():
    sizes = bucket_sizes(1024)
    assert nearest_bucket((3000, 4000), sizes) == (896, 1152)  # a 3:4 phone portrait
    assert nearest_bucket((1000, 1000), sizes) == (1024, 1024)
    pixels = fit(Image.new("RGB", (400, 300), (255, 0, 0)), (1152, 896), center=True)
    assert pixels.shape == (3, 896, 1152) and float(pixels[0].min()) == 1.0  # covered, nothing padded


def test_batches_hold_one_bucket_each_and_every_photo_once():
    photos = [Image.new("RGB", size) for size in ((64, 64), (128, 64), (64, 64), (128, 64), (64, 64))]
    dataset = BucketedPhotos(photos, [Image.new("RGB", (64, 64))], 64, center_crop=False)
    batches = bucket_batches([4, 1, 0, 3, 2], dataset, 2)
    assert sorted(i for batch in batches for i in batch) == [0, 1, 2, 3, 4]
    assert all(len({dataset.bucket(i) for i in batch}) == 1 for batch in batches)
    assert batches == [[4, 0], [1, 3], [2]]
    item = dataset[1]
    assert item["instance"].shape == item["class"].shape == (3, 48, 80)  # the class image cropped to its pair's bucket
