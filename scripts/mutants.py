"""Hand-written mutants: break one guarded behaviour at a time, run the tests that guard it, expect a failure.

    .venv/bin/python scripts/mutants.py [NAME ...]

Run it in a copy of the repository (with PYTHONPATH set to the copy, so the console scripts the tests start
import the copy too) while anything else uses this one: each mutant is written into the source for a while.

Each mutant is (file, original text, broken text, pytest selection). The file is restored afterwards, also when
the run is interrupted. Prints one line per mutant: killed (a test failed) or SURVIVED.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARDS = "tests/test_guarantees.py"

MUTANTS = {
    "growth cap checked only before growing": (
        "distilled_splat/strategy/capped.py",
        "        if int(candidates.sum()) > room:",
        "        if False:",
        GUARDS + "::test_growth_fills_the_room_exactly_with_the_highest_gradients",
    ),
    "ceiling ranks the lowest gradients": (
        "distilled_splat/strategy/capped.py",
        "torch.topk(ranked, room).indices",
        "torch.topk(-ranked, room).indices",
        GUARDS + "::test_growth_fills_the_room_exactly_with_the_highest_gradients",
    ),
    "ceiling not saved in checkpoints": (
        "distilled_splat/models/portable_splatfacto.py",
        "if isinstance(value, (Tensor, int, float))",
        "if isinstance(value, Tensor)",
        GUARDS + "::test_budget_holds_at_every_step_after_the_prune_even_across_a_resume",
    ),
    "budget not applied as a ceiling": (
        "distilled_splat/strategy/compaction.py",
        "            set_ceiling(state, self.budget)  # later growth",
        "            pass  # later growth",
        GUARDS + "::test_budget_holds_at_every_step_after_the_prune_even_across_a_resume",
    ),
    "structure cosine in float32": (
        "distilled_splat/losses.py",
        "student, target = student.double(), target.double()",
        "student, target = student.float(), target.float()",
        GUARDS + "::test_structure_loss_of_nearby_large_sets_matches_float64",
    ),
    "events never checked": (
        "distilled_splat/method_configs.py",
        "        last = self.max_num_iterations - 1\n",
        "        last = 10**9\n",
        GUARDS + "::test_events_after_the_last_step_are_refused_unless_turned_off",
    ),
    "structure loss without gradient": (
        "distilled_splat/models/distilled_splatfacto.py",
        'loss_dict["structure_loss"] = config.structure_weight * self.structure_loss(self.means)',
        'loss_dict["structure_loss"] = config.structure_weight * self.structure_loss(self.means.detach())',
        GUARDS + "::test_structure_loss_moves_the_students_centres_towards_the_teachers",
    ),
    "clone test reads split candidates": (
        "distilled_splat/ops/perturb.py",
        "    return (grads > strategy.grow_grad2d) & is_small",
        "    return grads > strategy.grow_grad2d",
        GUARDS + "::test_clone_candidates_are_exactly_what_gsplat_duplicates",
    ),
    "teacher cache from the parsed (distorted) cameras": (
        "distilled_splat/data/distilled_datamanager.py",
        "        _ = self.cached_train\n",
        "",
        "tests/test_scene_inputs.py::test_teacher_cache_lines_up_with_undistorted_training_images",
    ),
    "palette images accepted": (
        "distilled_splat/data/scene_checks.py",
        'USABLE_MODES = {"RGB", "RGBA", "L"}',
        'USABLE_MODES = {"RGB", "RGBA", "L", "P"}',
        "tests/test_damaged_scenes.py",
    ),
    "singular poses accepted": (
        "distilled_splat/data/scene_checks.py",
        "    if abs(np.linalg.det(pose[:3, :3])) < 1e-6:",
        "    if False:",
        "tests/test_damaged_scenes.py",
    ),
    "relocation without the alternating sign": (
        "distilled_splat/ops/relocation.py",
        "* (-1.0) ** k / torch.sqrt(k + 1)",
        "/ torch.sqrt(k + 1)",
        "tests/test_relocation.py",
    ),
    "MCMC growth past the cap": (
        "distilled_splat/strategy/mcmc.py",
        "min(self.cap_max, int((1 + self.grow_fraction) * current))",
        "int((1 + self.grow_fraction) * current)",
        "tests/test_relocation.py",
    ),
    "teacher start keeps the least important": (
        "distilled_splat/strategy/compaction.py",
        "top_k_mask(importance(), keep)",
        "top_k_mask(-importance(), keep)",
        "tests/test_frontier.py",
    ),
    "gradual cuts jump to the budget at once": (
        "distilled_splat/strategy/compaction.py",
        "** (1 / cuts_left))",
        "** (1 / 1))",
        "tests/test_frontier.py::test_gradual_cuts_reach_the_budget_in_equal_ratios_keeping_the_most_important",
    ),
    "teacher cache build draws from the student's random stream": (
        "distilled_splat/data/teacher_cache.py",
        "        with random_state_kept(device):\n            manifest = build(",
        "        if True:\n            manifest = build(",
        "tests/test_student.py::test_building_the_cache_draws_no_random_numbers",
    ),
    "frontier retrains finished models": (
        "distilled_splat/frontier/frontier.py",
        "pending = [spec for spec in specs if not self.results.result_path(spec).is_file()]",
        "pending = list(specs)",
        "tests/test_frontier.py",
    ),
    # ops/, losses.py and importance.py against their own test files
    "importance sampled with replacement": (
        "distilled_splat/ops/prune.py",
        "count, replacement=False, generator=generator",
        "count, replacement=True, generator=generator",
        "tests/test_pruning.py tests/test_fuzz.py",
    ),
    "mass prune keeps one share too little": (
        "distilled_splat/ops/prune.py",
        "<= (1 - share) * importance.double().sum()",
        "<= (1.01 - share) * importance.double().sum()",
        "tests/test_pruning.py tests/test_fuzz.py",
    ),
    "re-initialised moments kept": (
        "distilled_splat/ops/prune.py",
        "lambda _key, moment: torch.zeros_like(moment)",
        "lambda _key, moment: moment",
        "tests/test_pruning.py tests/test_fuzz.py",
    ),
    "perturbed moments kept": (
        "distilled_splat/ops/perturb.py",
        "        moment[mask] = 0\n",
        "",
        "tests/test_teacher_variants.py",
    ),
    "noise not relative to the attribute size": (
        "distilled_splat/ops/perturb.py",
        "return noise_scale * max(1.0, float(values.abs().mean()))",
        "return noise_scale",
        "tests/test_teacher_variants.py",
    ),
    "6D rotation noise on the quaternion's sign only": (
        "distilled_splat/ops/perturb.py",
        "            values[mask] = rotmat_to_quat(rotmat_from_6d(six))",
        "            values[mask] = selected",
        "tests/test_teacher_variants.py",
    ),
    "marginal kernel without the squared distance": (
        "distilled_splat/losses.py",
        "(coords[..., None] - bins) ** 2 * (-0.5 / sigma**2)",
        "(coords[..., None] - bins).abs() * (-0.5 / sigma**2)",
        "tests/test_structure_loss.py",
    ),
    "common box without the teacher": (
        "distilled_splat/losses.py",
        "lower = torch.minimum(points.min(0).values, teacher_lower) - margin",
        "lower = points.min(0).values - margin",
        "tests/test_structure_loss.py",
    ),
    "photometric weights swapped": (
        "distilled_splat/losses.py",
        "return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - similarity), l1, similarity",
        "return ssim_lambda * l1 + (1 - ssim_lambda) * (1 - similarity), l1, similarity",
        "tests/test_student.py::test_loss_terms_follow_the_definition",
    ),
    "area without the 3-sigma factor": (
        "distilled_splat/importance.py",
        "area = 9 * math.pi / torch.sqrt(det)",
        "area = math.pi / torch.sqrt(det)",
        "tests/test_pruning.py tests/test_fuzz.py",
    ),
    "importance of invisible Gaussians kept": (
        "distilled_splat/importance.py",
        'weights = torch.where(meta["radii"][0] > 0, weights / area, torch.zeros_like(weights))',
        "weights = weights / area",
        "tests/test_pruning.py tests/test_fuzz.py",
    ),
    # compact exports against an independent reader
    "SPZ SH signs not flipped with the axes": (
        "distilled_splat/exports/exporters.py",
        "    sh = (splats.f_rest * signs).transpose(0, 2, 1)",
        "    sh = splats.f_rest.transpose(0, 2, 1)",
        "tests/test_exports.py::test_every_format_round_trips_through_splat_transform_within_its_quantisation",
    ),
    "SPZ rotations not flipped with the axes": (
        "distilled_splat/exports/exporters.py",
        "unit_quaternions(splats.quats) * np.array([1.0, 1.0, -1.0, -1.0])",
        "unit_quaternions(splats.quats) * np.array([1.0, 1.0, 1.0, 1.0])",
        "tests/test_exports.py::test_every_format_round_trips_through_splat_transform_within_its_quantisation",
    ),
    # issue 22-25: schedules, guarantees, the frontier's contest, distillation at pseudo views, the viewer page
    "budget cuts not a scheduled event": (
        "distilled_splat/models/distilled_splatfacto.py",
        '        if self.init == "teacher" and (self.budget_cuts or 0) > 1:\n            # The last cut',
        "        if False:\n            # The last cut",
        GUARDS + "::test_events_after_the_last_step_are_refused_unless_turned_off",
    ),
    "a student above its budget finishes": (
        "distilled_splat/models/distilled_splatfacto.py",
        "        if budget is not None and self.num_points > budget:",
        "        if False:",
        GUARDS + "::test_a_student_that_ends_above_its_budget_fails_instead_of_finishing",
    ),
    "zero steps accepted": (
        "distilled_splat/run_configs.py",
        "            if steps is not None and steps < 1:",
        "            if False:",
        "tests/test_recipe.py::test_bad_settings_fail_in_one_line_with_nothing_written",
    ),
    "pruned-finetuned built as the gradual student": (
        "distilled_splat/frontier/contenders.py",
        "    without_distillation(from_teacher(config, budget_cuts=1))",
        "    without_distillation(from_teacher(config))",
        "tests/test_frontier.py::test_every_contender_builds_the_config_it_declares "
        "tests/test_frontier.py::test_pruned_and_finetuned_starts_from_exactly_the_pruned_teacher_and_never_grows",
    ),
    "compute not matched for contenders without a teacher": (
        "distilled_splat/frontier/contenders.py",
        '"matched": settings.student_steps + (settings.steps if compute == "total" else 0),',
        '"matched": settings.student_steps,',
        "tests/test_frontier.py::test_every_contender_builds_the_config_it_declares",
    ),
    "PUP's first round straight to the budget": (
        "distilled_splat/frontier/contenders.py",
        "    config.pipeline.model.first_cut_keep = PUP_FIRST_ROUND_KEEP",
        "    config.pipeline.model.first_cut_keep = None",
        "tests/test_frontier.py::test_pup_rounds_keep_the_most_sensitive_fifth_then_cut_to_the_budget",
    ),
    "Fisher without the patch pooling": (
        "distilled_splat/sensitivity.py",
        "    patch: int = 4,",
        "    patch: int = 1,",
        "tests/test_sensitivity.py",
    ),
    "frontier results keyed without the config": (
        "distilled_splat/frontier/configs.py",
        "        return combined_fingerprint(fingerprint_parts(config), extra)",
        "        return combined_fingerprint({}, extra)",
        "tests/test_frontier.py::test_other_settings_train_anew_and_never_show_in_the_new_table",
    ),
    "a run made with other settings reused": (
        "distilled_splat/training.py",
        "    differing = [part for part, value in wanted.items() if recorded.get(part) != value]",
        "    differing = []",
        "tests/test_recipe.py::test_a_finished_run_made_with_other_settings_is_refused_not_reused",
    ),
    "the scene left out of a run's fingerprint": (
        "distilled_splat/fingerprints.py",
        '        "scene": scene_fingerprint(scene) if scene is not None else "none",',
        '        "scene": "none",',
        "tests/test_recipe.py::test_a_finished_run_on_another_scene_or_size_is_refused",
    ),
    "a run folder without a fingerprint taken as this run's": (
        "distilled_splat/training.py",
        "    if recorded is None:\n        raise DistilledSplatError(",
        "    if recorded is None:\n        return wanted\n        raise DistilledSplatError(",
        "tests/test_recipe.py::test_a_run_folder_without_a_fingerprint_is_refused",
    ),
    "the C++ compositing gradient of the conic misses its half": (
        "distilled_splat/rendering/cpu/composite.cpp",
        "            g[4] += dl_dsigma * 0.5 * dy * dy;",
        "            g[4] += dl_dsigma * dy * dy;",
        "tests/test_cpp_backend.py::test_same_images_gradients_and_radii_as_pytorch",
    ),
    "the C++ projection's quaternion gradient loses a sign": (
        "distilled_splat/rendering/cpu/project.cpp",
        "      gq[0] = 2 * (-z * gR[0][1]",
        "      gq[0] = 2 * (z * gR[0][1]",
        "tests/test_cpp_backend.py::test_same_images_gradients_and_radii_as_pytorch",
    ),
    "pseudo views never taken": (
        "distilled_splat/data/distilled_datamanager.py",
        "        if self.pseudo_images and self.pseudo_steps_before(step + 1) > self.pseudo_steps_before(step):",
        "        if False:",
        "tests/test_pseudo_views.py::test_a_share_of_steps_trains_on_pseudo_views_against_the_aggregate_alone",
    ),
    "pseudo views outside the cache key": (
        "distilled_splat/data/distilled_datamanager.py",
        "            concatenated(training, self.pseudo_cameras),",
        "            concatenated(training, self.pseudo_cameras[torch.zeros(0, dtype=torch.long)]),",
        "tests/test_pseudo_views.py",
    ),
    "interpolated views not slerped": (
        "distilled_splat/data/pseudo_views.py",
        "    pose[:3, :3] = quaternion_matrix(quat)[:3, :3]",
        "    pose[:3, :3] = pose_a[:3, :3]",
        "tests/test_pseudo_views.py::test_interpolated_views_lie_between_a_camera_and_its_nearest_neighbour",
    ),
    "fewer SH bands started from the wrong bands": (
        "distilled_splat/models/distilled_splatfacto.py",
        "                value = value[:, : param.shape[1]]",
        "                value = value[:, -param.shape[1] :]",
        "tests/test_pseudo_views.py::test_student_with_fewer_sh_bands_starts_from_the_teachers_lower_ones",
    ),
    "merged set keeps the old moments": (
        "distilled_splat/ops/prune.py",
        "            return torch.zeros(value.shape, dtype=moment.dtype, device=moment.device)",
        "            return torch.ones(value.shape, dtype=moment.dtype, device=moment.device)",
        "tests/test_pruning.py::test_replace_gaussians_swaps_the_whole_set_and_restarts_moments_and_statistics",
    ),
    "setup goes on after a failed splat-transform install": (
        "scripts/setup.sh",
        '.venv/node" >&2\n    exit 1\nfi',
        '.venv/node" >&2\nfi',
        "tests/test_setup_script.py",
    ),
    "a full-length ns-train run leaves its cuts unsettled": (
        "distilled_splat/method_configs.py",
        "        fit_model_to_run_length(self, self.max_num_iterations)\n",
        "",
        "tests/test_schedules.py::test_ns_train_settles_the_cuts_at_full_length_too",
    ),
    "long runs cut gradually too": (
        "distilled_splat/models/distilled_splatfacto.py",
        "self.budget_cuts = GRADUAL_CUTS if max_steps < MERGE_ONCE_FROM_STEPS else 1",
        "self.budget_cuts = GRADUAL_CUTS",
        "tests/test_schedules.py::test_the_default_student_cuts_by_the_run_length_and_never_densifies",
    ),
    "a stalled npm waited for": (
        "scripts/setup.sh",
        'if timeout "${NPM_TRY_SECONDS:-300}" npm install',
        "if npm install",
        "tests/test_setup_script.py::test_an_npm_that_stalls_is_stopped_and_tried_again",
    ),
    "viewer page without the axis conversion": (
        "distilled_splat/exports/web_viewer.py",
        "    return euler_xyz_degrees(rotation.T @ FLIP), settings",
        "    return (0.0, 0.0, 0.0), settings",
        "tests/test_web_viewer.py::test_student_page_opens_at_the_held_out_view",
    ),
    "SH coefficients turned the wrong way": (
        "distilled_splat/frames.py",
        "return torch.linalg.lstsq(basis, basis_turned).solution",
        "return torch.linalg.lstsq(basis, basis_turned).solution.T",
        "tests/test_compact.py::test_sh_rotation_keeps_every_colour",
    ),
    "a PLY is only ever read in the training frame": (
        "distilled_splat/importing.py",
        'frames = {"normalised": Similarity.identity(), "world": world_to_training}',
        'frames = {"normalised": Similarity.identity(), "world": Similarity.identity()}',
        "tests/test_compact.py::test_a_world_frame_ply_is_found_in_its_frame_and_the_student_goes_back_there",
    ),
    "the student stays in the training frame": (
        "distilled_splat/recipe.py",
        'back = training_to_given(configs["vanilla"].get_base_dir()) if self.given is not None else None',
        "back = None",
        "tests/test_compact.py::test_a_world_frame_ply_is_found_in_its_frame_and_the_student_goes_back_there",
    ),
    "nerfstudio's splatfacto runs load as they are": (
        "distilled_splat/teachers.py",
        "    config = as_portable(read_config(config_path))",
        "    config = read_config(config_path)",
        "tests/test_compact.py::test_nerfstudio_splatfacto_runs_teach_through_ns_train_on_cpu",
    ),
    "a killed run's cache staging left behind": (
        "distilled_splat/data/teacher_cache.py",
        "            shutil.rmtree(stale, ignore_errors=True)",
        "            pass",
        "tests/test_recipe.py::test_a_run_killed_at_each_moment_completes_when_run_again",
    ),
}


def run(name: str) -> bool:
    path, original, broken, selection = MUTANTS[name]
    file = ROOT / path
    text = file.read_text()
    if text.count(original) != 1:
        raise SystemExit(f"mutant {name!r}: the original text is not found exactly once in {path}")
    try:
        file.write_text(text.replace(original, broken))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection.split()],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        file.write_text(text)
    return result.returncode != 0


if __name__ == "__main__":
    # A kill (SIGTERM) must still restore the mutated file: make it unwind through run()'s finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    names = sys.argv[1:] or list(MUTANTS)
    killed = 0
    for name in names:
        dead = run(name)
        killed += dead
        print(f"{'killed  ' if dead else 'SURVIVED'} {name}", flush=True)
    print(f"{killed} of {len(names)} mutants killed")
