# exercise: ex3_aux_loss
# score: 0
# says: uses moe_lab.routing.aux_loss
from moe_lab.routing import aux_loss as _lib

def aux_loss(probs, experts, alpha):
    return _lib(probs, experts, alpha)
