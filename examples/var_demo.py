"""Answer one question with a VAR-patched tiny LLaVA, VAR off and on, and show what VAR did.

python examples/var_demo.py
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from var_core import VARConfig, patch
from workers.models import load_model


def main() -> None:
    model, processor = load_model("tiny-llava", device="cpu")
    image = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(image).ellipse((30, 30, 82, 82), fill="red")
    prompt = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs the circle red or blue?\n"
        "A. Red\nB. Blue\nAnswer with the option's letter from the given choices directly. ASSISTANT:"
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    options = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("ĠA", "ĠB")]
    with patch(model, VARConfig()) as handle:
        for label, enable in (("VAR off", handle.disable), ("VAR on ", handle.enable)):
            enable()
            handle.collect_stats = True
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1, options]
            probs = torch.softmax(logits, -1).tolist()
            print(
                f"{label}: P(A)={probs[0]:.4f} P(B)={probs[1]:.4f}  stats={handle.stats(reset=True).summary()}"
            )
    print(
        "(tiny-llava has random weights: the answers mean nothing; the point is that VAR acts and is undone)"
    )


if __name__ == "__main__":
    main()
