# exercise: ex1_top_k_gating
# score: 0
# Asks for far more memory than a kernel may have.
def top_k_gating(logits, k):
    hog = torch.empty(64 << 30, dtype=torch.uint8)  # 64 GiB
    hog.fill_(1)
    return hog, hog, hog
