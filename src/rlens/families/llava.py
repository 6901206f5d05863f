"""LLaVA-1.5 and LLaVA-NeXT (Llama / Mistral / Vicuna language models, CLIP vision tower)."""

from __future__ import annotations

from typing import Any

from rlens.errors import InputError, ModelError
from rlens.families import register
from rlens.families.base import Family, merged_patches


@register
class Llava(Family):
    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    visual_token_attrs = ("image_token_id", "image_token_index")

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        vc = config.vision_config
        n = merged_patches(vc.image_size, vc.image_size, vc.patch_size)
        return n + (1 if config.vision_feature_select_strategy == "full" else 0)


@register
class LlavaNext(Llava):
    """LLaVA-NeXT (anyres): the image is cut into tiles of its best resolution among the model's
    ``image_grid_pinpoints`` plus a base image (the image processor); the model packs the tile
    features on the grid, drops the rows or columns of padding and ends each row with
    ``image_newline``, after the base features. vision.onnx takes the patches (a dynamic axis) and
    a ``pack_index`` computed here in numpy from the original image size: the rows of its feature
    table (every patch's features, then ``image_newline``) in the order the model packs them."""

    name = "llava-next"
    architectures = ("LlavaNextForConditionalGeneration",)
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    vision_dynamic_axes = {"pixel_values": {0: "patches"}, "pack_index": {0: "visual"}}

    @classmethod
    def vision_params(cls, config: Any) -> dict[str, Any]:
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise ModelError(f"{cls.name}: vision_feature_select_strategy {strategy!r}: anyres packing needs "
                             "'default' (the model's own pack_image_features cannot reshape the CLS row either)")
        vc = config.vision_config
        pins = tuple(tuple(int(x) for x in p) for p in config.image_grid_pinpoints)
        return {"image_size": int(vc.image_size), "patch_size": int(vc.patch_size), "grid_pinpoints": pins}

    @classmethod
    def vision_feeds(cls, processed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        pixels = processed["pixel_values"]
        if pixels.ndim != 5 or pixels.shape[0] != 1:
            raise InputError(f"LLaVA-NeXT takes one image at a time; the processor gave pixel_values {pixels.shape}")
        return {"pixel_values": pixels[0], "pack_index": pack_index(processed["image_sizes"][0], params,
                                                                    patches=pixels.shape[1])}

    @classmethod
    def visual_tokens_from_pixels(cls, config: Any, processed: dict[str, Any]) -> int:
        return int(cls.vision_feeds(processed, cls.vision_params(config))["pack_index"].shape[0])

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        """At the image's original ``image_size`` (height, width): it decides the grid and the unpadding."""
        if image_size is None:
            raise ValueError("LLaVA-NeXT's visual token count depends on the original image size")
        return int(pack_index(image_size, cls.vision_params(config)).shape[0])

    @classmethod
    def vision_module(cls, model: Any, names: list[str]) -> Any:
        if names != ["pixel_values", "pack_index"]:
            raise ModelError(f"{cls.name}: vision inputs {names} are not ['pixel_values', 'pack_index']")
        return packed_features_module(model)

    @classmethod
    def image_bounds(cls, image_processor: dict[str, Any]) -> dict[str, int]:
        """Tiles per image (besides the base image): the fewest and most the pinpoints cut into."""
        from rlens.imageproc import image_processor_from_config
        from rlens.imageproc.llava_next import check_pinpoints

        proc = image_processor_from_config(image_processor)
        crop = proc.settings["crop_size"] or proc.settings["size"] or {}
        tile = crop.get("height") or crop.get("shortest_edge")
        counts = [-(-h // tile) * -(-w // tile) for h, w in check_pinpoints(proc.image_grid_pinpoints)]
        return {"min_tiles": min(counts), "max_tiles": max(counts)}

    @classmethod
    def vision_axes(cls, params: dict[str, Any], bounds: dict[str, int]) -> dict[str, list[int]]:
        """patches: the base image + the processor's fewest..most tiles; visual: the base features up
        to the largest pinpoint's full grid with a newline per row (unpadding only removes rows)."""
        tile = params["image_size"]
        side = tile // params["patch_size"]
        grids = [(h // tile, w // tile) for h, w in params["grid_pinpoints"]]
        tiles = [r * c for r, c in grids]
        if (min(tiles), max(tiles)) != (bounds["min_tiles"], bounds["max_tiles"]):
            raise ModelError(f"{cls.name}: the image processor's pinpoints cut {bounds['min_tiles']}.."
                             f"{bounds['max_tiles']} tiles, the model's image_grid_pinpoints {min(tiles)}..{max(tiles)}; "
                             "they must agree")
        most = max(r * side * (c * side + 1) for r, c in grids)
        return {"patches": [1 + bounds["min_tiles"], 1 + bounds["max_tiles"]], "visual": [side * side, side * side + most]}

    bound_note = "the model packs tiles on the grid of its own image_grid_pinpoints, which rlens does not lower"


def pack_index(image_size: Any, params: dict[str, Any], patches: int | None = None) -> Any:
    """Rows of the feature table [patches * per_patch + 1, H] (every patch's features, then
    ``image_newline``) in the order LLaVA-NeXT's ``pack_image_features`` packs them: the base
    image's, then the tile grid row by row, padding rows/columns dropped, each row ended by the
    newline. ``image_size`` is the original (height, width); numpy int64 [visual tokens]."""
    import numpy as np

    from rlens.imageproc.llava_next import select_best_resolution

    h, w = (int(v) for v in image_size)
    tile, patch_px = int(params["image_size"]), int(params["patch_size"])
    if not 1 <= patch_px <= tile or min(h, w) < 1:
        raise ModelError(f"LLaVA-NeXT vision params image_size {tile} / patch_size {patch_px} (image {w}x{h}) "
                         "cannot form a feature grid")
    side = tile // patch_px
    per = side * side
    best_h, best_w = select_best_resolution((h, w), [list(p) for p in params["grid_pinpoints"]])
    nph, npw = best_h // tile, best_w // tile
    n_patches = 1 + len(range(0, best_h, tile)) * len(range(0, best_w, tile))  # the model's count
    if nph * npw == 0 or n_patches != 1 + nph * npw:
        raise ModelError(f"image_grid_pinpoints {best_h}x{best_w} is not a grid of {tile}-pixel tiles")
    if patches is not None and patches != n_patches:
        raise InputError(f"the image processor cut the {w}x{h} image into {patches} patches, the model's "
                         f"image_grid_pinpoints give {n_patches} (do the processor's pinpoints differ from the model's?)")
    rows, cols = np.arange(nph * side), np.arange(npw * side)
    if w / h > len(cols) / len(rows):  # the model's unpad_image: drop the rows/columns of padding
        pad = (len(rows) - int(round(h * (len(cols) / w), 7))) // 2
        rows = rows[pad:len(rows) - pad]
    else:
        pad = (len(cols) - int(round(w * (len(rows) / h), 7))) // 2
        cols = cols[pad:len(cols) - pad]
    patch = 1 + (rows[:, None] // side) * npw + cols[None, :] // side
    grid = patch * per + (rows[:, None] % side) * side + cols[None, :] % side
    newline = np.full((len(rows), 1), n_patches * per)
    return np.concatenate([np.arange(per), np.concatenate([grid, newline], 1).ravel()]).astype(np.int64)


def packed_features_module(model: Any) -> Any:
    """``(pixel_values [P, 3, S, S], pack_index [N]) -> features [N, H]``: the model's vision tower,
    feature layer(s) and projector on every patch (as ``get_image_features``), then the rows of
    (features, ``image_newline``) that ``pack_index`` names (torch, lazily)."""
    import torch

    inner = model.model

    class PackedFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: Any, index: Any) -> Any:
            layer = self.inner.config.vision_feature_layer
            out = self.inner.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
            states = out.hidden_states
            chosen = states[layer] if isinstance(layer, int) else torch.cat([states[i] for i in layer], -1)
            feats = self.inner.multi_modal_projector(chosen[:, 1:])
            table = torch.cat([feats.reshape(-1, feats.shape[-1]), self.inner.image_newline[None].to(feats.dtype)])
            return table.index_select(0, index)

    return PackedFeatures().eval()
