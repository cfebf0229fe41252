"""Images into batches: folders of images (folders.py, flat_folder.py with a labels file), decoding
(decoding.py), the pixel work of training and evaluation views (transforms.py, rand_augment.py), what a model
expects of its input (preprocessing.py), the sample order (sampler.py) and the MindSpore pipeline that runs
it all in worker processes (pipeline.py); ImageNet's class list (imagenet.py).

Imports native/ (the JPEG crop decoder) and cluster/ (this process's rank and its share of the CPUs); no
model.
"""
