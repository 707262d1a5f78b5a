"""Running Cog models, one home for it: a local Cog server subprocess (``server``), a container
(``container``), one HTTP client for either (``client``), an image's code without Docker
(``unpack``) and one prediction of an image (``predict_image``)."""
