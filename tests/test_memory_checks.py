"""One memory check for every size: the model's parameters (check_model_size) and the inverse
problems' arrays go through check_memory, which names the largest part and what to lower."""

import pytest

from autovae._checks import check_memory
from autovae.config import Config
from autovae.models import BYTES_PER_PARAMETER, check_model_size, model_class


def test_a_model_over_the_limit_names_its_largest_part_and_its_settings():
    config = Config(hidden=64, depth=1, latent="normal/normal:4")
    need = check_model_size(model_class("vae"), config, (1, 28, 28), limit=2**40)
    assert need % BYTES_PER_PARAMETER == 0 and need > 0
    with pytest.raises(ValueError) as err:
        check_model_size(model_class("vae"), config, (1, 28, 28), limit=need - 1)
    message = str(err.value)
    assert message.startswith(f"training model vae ({need // BYTES_PER_PARAMETER:,} parameters")
    assert "(its decoder, 51,280 parameters with hidden = 64, depth = 1, " in message
    assert message.endswith("lower hidden or depth or latent")


def test_check_memory_lowers_the_flags_of_the_part_or_what_it_is_told():
    parts = {"--chains 4 x --draws 9 (the kept draws)": 3 * 2**30, "--grid 8": 2**30}
    with pytest.raises(ValueError, match=r"these chains would need about 4\.0 GiB of memory "
                                         r"\(--chains 4 x --draws 9 \(the kept draws\): 3\.0 GiB"
                                         r"\), more than this machine's 2\.0 GiB; lower --chains "
                                         r"and --draws$"):
        check_memory(parts, "these chains", limit=2 * 2**30)
    with pytest.raises(ValueError, match="; lower K$"):
        check_memory(parts, "x", limit=1, lower={"--chains 4 x --draws 9 (the kept draws)": "K"})
    assert check_memory(parts, "x", limit=2**40) == 4 * 2**30
