# exercise: ex1_top_k_gating
# score: 5
# Honest but different: other names inside (the signature is the task's), explicit loops instead of
# sort/gather; must not be failed.
def top_k_gating(logits, k):
    scores, how_many = logits, k
    p = torch.softmax(scores.float(), dim=1)
    n_tok, n_exp = p.shape
    picks = torch.zeros(n_tok, how_many, dtype=torch.long)
    for row in range(n_tok):
        remaining = list(range(n_exp))
        for j in range(how_many):
            best = remaining[0]
            for e in remaining[1:]:
                if p[row, e].item() > p[row, best].item():  # strict: the lower index keeps a tie
                    best = e
            picks[row, j] = best
            remaining.remove(best)
    w = torch.stack([p[row, picks[row]] for row in range(n_tok)])
    if how_many > 1:
        w = w / w.sum(dim=1, keepdim=True)
    return p, w, picks
