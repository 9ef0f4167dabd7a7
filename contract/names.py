"""Names training writes into a published version and the service reads back, spelled once."""

from __future__ import annotations

from typing import Final

#: The SavedModel endpoint that classifies: float32 RGB pixels in, probabilities out.
SERVE_ENDPOINT: Final = "serve"
#: Names of its input and output tensors, as the TF Serving and V2 protocols show them.
SERVE_INPUT_NAME: Final = "images"
SERVE_OUTPUT_NAME: Final = "probabilities"
#: The explanation endpoints: Grad-CAM heatmaps, and the first convolution layers' outputs.
GRADCAM_ENDPOINT: Final = "gradcam"
FEATURE_MAPS_ENDPOINT: Final = "feature_maps"

#: A version's report folder and the files training writes into it (name -> media type).
REPORT_DIR: Final = "report"
CURVES_FILE: Final = "curves.png"
CONFUSION_MATRIX_FILE: Final = "confusion_matrix.png"
CONFUSION_MATRIX_JSON: Final = "confusion_matrix.json"
PER_CLASS_FILE: Final = "per_class.json"
FILTERS_FILE: Final = "filters.png"
REPORT_FILES: Final[dict[str, str]] = {
    CURVES_FILE: "image/png",
    CONFUSION_MATRIX_FILE: "image/png",
    CONFUSION_MATRIX_JSON: "application/json",
    PER_CLASS_FILE: "application/json",
    FILTERS_FILE: "image/png",
}
