"""MoELayer refuses wrong inputs on the rank with a clear message (no hang for the others)."""
import pytest

from moe_lab import MoEConfig
from moe_lab.cluster import Cluster, RankError
from rank_fns import bad_input_on_rank


@pytest.mark.parametrize("kind, words", [("shape", "must be a [N, d_model=64] tensor"), ("dtype", "dtype torch.float64")])
def test_wrong_x_is_a_value_error_naming_the_rank(kind, words):
    with Cluster(world_size=2, timeout=10) as c:
        with pytest.raises(RankError) as err:
            c.run(bad_input_on_rank, MoEConfig(num_experts=2, k=1), kind)
        assert "ValueError" in str(err.value) and words in str(err.value)
