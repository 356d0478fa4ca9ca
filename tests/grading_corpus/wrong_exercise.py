# exercise: ex1_top_k_gating
# score: 0
# build: other-exercise ex3_aux_loss
# says: this is the notebook of ex3_aux_loss.ipynb
