//! Log-likelihood scoring over a `ModelRunner` (what `hangar eval --device cuda` uses)
//! gives the same scores as the direct CPU path, for batched continuations, rolling
//! windows, and after something else reallocated the runner's KV storage.

use hangar_engine::{BorrowedCpuRunner, LoglikRequest, LoglikScorer, ModelRunner};
use hangar_kernels::ThreadPool;
use hangar_models::synth::{self, SynthArch, SynthType};
use hangar_models::Model;

fn tiny(arch: SynthArch) -> (Model, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "hangar-loglik-runner-{arch:?}-{}.gguf",
        std::process::id()
    ));
    let shape = synth::preset(arch, "tiny").expect("preset");
    synth::write(arch, &shape, SynthType::Q8_0, 3, &path, 1, |_, _| {}).expect("synth");
    (Model::load(&path).expect("load"), path)
}

#[test]
fn scoring_on_a_runner_equals_the_direct_cpu_path() {
    for arch in [SynthArch::Llama, SynthArch::Gemma3] {
        let (model, path) = tiny(arch);
        let pool = ThreadPool::new(2);
        let reqs = vec![
            LoglikRequest {
                context: vec![1, 17, 33, 48, 5, 6, 7],
                continuations: vec![vec![9, 10], vec![11], vec![12, 13, 14, 15]],
            },
            LoglikRequest {
                context: vec![1],
                continuations: vec![vec![20, 21, 22]],
            },
        ];
        let direct = LoglikScorer::new().score(&model, &pool, &reqs).unwrap();
        let mut runner = BorrowedCpuRunner::new(&model, &pool);
        let mut on = LoglikScorer::new();
        let via = on.score_on(&mut runner, &reqs).unwrap();
        assert_eq!(direct, via, "{arch:?}");
        // A larger batch grows the runner's KV storage; a smaller one reuses it.
        let mut more = reqs.clone();
        more.extend(reqs.iter().cloned());
        let twice = on.score_on(&mut runner, &more).unwrap();
        assert_eq!(&twice[..2], &direct[..], "{arch:?}");
        assert_eq!(&twice[2..], &direct[..], "{arch:?}");
        // Something else reallocated the runner's KV (a generation): told, the scorer
        // allocates again and the scores stay the same.
        runner
            .allocate_kv(16, &vec![1; runner.kv_layout().n_groups()])
            .unwrap();
        on.runner_kv_reset();
        assert_eq!(on.score_on(&mut runner, &reqs).unwrap(), direct, "{arch:?}");
        // Rolling windows.
        let doc: Vec<u32> = (0..90).map(|i| (i * 7 % 200 + 3) as u32).collect();
        let a = LoglikScorer::new()
            .rolling(&model, &pool, 1, &doc, 32)
            .unwrap();
        let b = on.rolling_on(&mut runner, 1, &doc, 32).unwrap();
        assert_eq!(a, b, "{arch:?}");
        assert!(a.is_finite() && a < 0.0);
        let _ = std::fs::remove_file(&path);
    }
}
