"""The decoder's refusals: an upload that cannot become a model input, always the client's fault.

Each error has a ``detail`` that says what to fix and a ``category`` (``empty``, ``unsupported``,
``corrupt``, ``too_large``); the service's edge maps the category to a status code, training to a
skipped file. Nothing here knows HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

_SEND_INSTEAD: Final = "send PNG, JPEG, WebP, BMP or GIF"


def _restore_error(cls: type[ImageError], detail: str) -> ImageError:
    """Rebuild an :class:`ImageError` without calling the subclass constructor (for pickle)."""
    error = cls.__new__(cls)
    ImageError.__init__(error, detail)
    return error


class ImageError(Exception):
    """An upload that cannot be turned into a model input; the client's fault, never a 5xx.

    Attributes:
        category: What is wrong, one word: ``empty``, ``unsupported``, ``corrupt``,
            ``too_large``.
        detail: Human-readable message that says what to fix (goes into ``{"detail": ...}``).
    """

    category: ClassVar[str] = "corrupt"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclass constructors take structured arguments, not the detail string, so the default
        # Exception pickling (cls(*args)) would garble them; a process pool needs this to work.
        return (_restore_error, (type(self), self.detail), self.__dict__)


class EmptyImageError(ImageError):
    """The upload has zero bytes."""

    category: ClassVar[str] = "empty"

    def __init__(self) -> None:
        super().__init__("the file is empty")


class UnsupportedImageError(ImageError):
    """The bytes are not one of :data:`SUPPORTED_FORMATS`.

    Attributes:
        kind: What the bytes look like ("PDF", "SVG", "TIFF", ...), or None if unrecognised.
    """

    category: ClassVar[str] = "unsupported"

    def __init__(self, kind: str | None = None) -> None:
        super().__init__(f"not a supported image: {kind or 'unrecognised bytes'}; {_SEND_INSTEAD}")
        self.kind = kind


class CorruptImageError(ImageError):
    """A supported format whose data cannot be decoded: truncated, corrupt, malformed.

    Attributes:
        reason: What the decoder complained about.
    """

    category: ClassVar[str] = "corrupt"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the image could not be decoded (truncated or corrupt): {reason}")
        self.reason = reason


class ImageTooLargeError(ImageError):
    """The image declares more pixels than allowed; refused before decoding.

    Attributes:
        width, height: Declared size in pixels, or None where only the pixel count is known.
        pixels: Declared width * height.
        max_pixels: The limit that was exceeded.
    """

    category: ClassVar[str] = "too_large"

    def __init__(
        self,
        *,
        pixels: int,
        max_pixels: int,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        size = f"{width} x {height} = " if width is not None and height is not None else ""
        super().__init__(f"the image is {size}{pixels} pixels; the limit is {max_pixels} pixels")
        self.width = width
        self.height = height
        self.pixels = pixels
