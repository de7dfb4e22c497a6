#!/usr/bin/env bash
# Every reproduction family, in priority order, every committed seed; resumable: run it again to continue where it
# stopped. The *_step specs rerun families 2-4, 14d and 02d under the converging step schedule (repro/02e_dense_step.toml).
#   bash repro/run_all.sh [WORKERS]
set -u
cd "$(dirname "$0")/.."
workers=${1:-2}
for spec in 01_snip_table1 01_snip_table1_lenet5 02a_at_init 02b_after_training 02c_ltr \
            03a_ablations_at_init 03b_ablations_after_training 04a_prune_after_init 04b_ltr_rewind 04c_random_after_init \
            07a_imp_rewind 07b_imp_finetune_sign 07c_imp_longer 07d_imp_rewind_10ep 07f_imp_sign_reinit \
            14a_cost_at_init 14b_cost_random_erk 14c_cost_random_like_synflow 14d_cost_gradual 14e_cost_set \
            14f_cost_rigl 14g_cost_after_training 14h_cost_ltr 02d_at_init_variants 01c_snip_lee_recipe 01e_snip_init 01f_snip_batch_size 01g_snip_random_labels 07e_imp_pf_lenet \
            01h_snip_random_labels_subset 01i_snip_random_labels_subset_lenet5 01j_snip_lee_recipe_lenet5 01k_lee_recipe_lenet5_init \
            16a_vit_at_init 16b_vit_ablations 16c_vit_after_training \
            02e_dense_step 02b_after_training_step 02c_ltr_step 02a_at_init_step 04b_ltr_rewind_step \
            04a_prune_after_init_step 04c_random_after_init_step 03b_ablations_after_training_step \
            03a_ablations_at_init_step 14d_cost_gradual_step 14d_cost_gradual_step_early 02d_at_init_variants_step \
            31a_since_at_init_step 31b_random_erk_step 31c_lamp_after_training_step 31d_since_ablations_step \
            31e_since_like_step 31f_since_vit_step 02f_dense_step_lenet5 31g_since_lenet5_step 31h_since_lenet5_like_step \
            31k_lamp_after_training_lenet5_step 31l_lamp_after_training_vit 31i_since_vit_like_step \
            31j_since_lenet5_shuffle_step; do
  .venv/bin/prunelab sweep "repro/$spec.toml" --root repro/runs --workers "$workers" --no-progress
done
