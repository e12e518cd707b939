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
