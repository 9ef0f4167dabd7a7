"""The one image decoder that training and serving share, split by job: :mod:`.probe` (what the
first bytes say), :mod:`.decode` (bytes -> model-ready pixels), :mod:`.files` (image files on
disk), :mod:`.errors` (the refusals).

Training calls the very same :func:`~contract.decoding.decode.decode_image` from its tf.data
pipeline as the service on each upload, so the two can never disagree about a pixel.

Safety rules (each one is a way real services have been hurt):

* Formats are recognised by content, never by filename or declared content type, and Pillow is only
  allowed to try the five supported decoders: PDF, EPS/PostScript (which Pillow would hand to
  Ghostscript), SVG, TIFF, PSD, ICO... are refused before any plugin looks at them.
* The pixel count is checked from the header before anything is decoded (decompression bombs), and
  Pillow's own bomb and PNG text-chunk limits are turned into client errors.
* Pillow's warnings never escape, ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched, and
  animations are never iterated: only the first frame is decoded.
* JPEGs much larger than the target are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (libjpeg-turbo through ``Image.draft``), never below the target size, then resized as usual.
"""
