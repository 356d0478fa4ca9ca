# exercise: ex1_top_k_gating
# score: 0
# build: no-source
# says: could not read
def top_k_gating(logits, k):
    return None
