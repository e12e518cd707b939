"""Import layering (issue 30 item 3): the state types sit at the bottom, layers and models never load
the streaming package, which sits on top of them."""

import subprocess
import sys
import textwrap


def test_state_layers_and_models_do_not_import_the_streaming_package():
    code = textwrap.dedent(
        """
        import sys

        def loaded():
            return sorted(m for m in sys.modules if m == "ssm_mm" or m.startswith("ssm_mm."))

        import ssm_mm.state
        assert loaded() == ["ssm_mm", "ssm_mm.state"], loaded()
        import ssm_mm.layers
        import ssm_mm.models.multimodal
        bad = [m for m in loaded() if m.startswith("ssm_mm.streaming")]
        assert not bad, bad
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_core_names_no_dataset():
    """Worlds are plugins (issue 30 item 2): outside ssm_mm/worlds/ no module names the built-in world
    or its words (its sounds, its attribute names)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ssm_mm"
    word = re.compile(r"avworld|color_of|shape_of|bell|chirp", re.IGNORECASE)
    hits = [
        f"{p.relative_to(root)}:{i}: {line.strip()}"
        for p in sorted(root.rglob("*.py"))
        if "worlds" not in p.relative_to(root).parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if word.search(line)
    ]
    assert not hits, "\n".join(hits)
