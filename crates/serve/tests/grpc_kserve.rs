//! End-to-end tests of the KServe V2 gRPC API on the real default model over a real
//! socket. The calls go over h2 (the HTTP/2 crate tonic itself uses) with messages
//! encoded by prost from the proto; the Python tests prove the same API with
//! tritonclient[grpc]. These check the refusals: bad tensors, unknown models, keys.

use hangar_engine::{Engine, EngineConfig, LoadedModel};
use hangar_serve::kserve_grpc::pb;
use hangar_serve::{AppState, ServeConfig, Services};
use hangar_testkit::model_path;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

const MODEL: &str = "test-model";

struct Server {
    grpc: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(keys: Vec<String>) -> Option<Server> {
        let path = model_path()?;
        let engine = Engine::start(
            LoadedModel::load(&path, 2).unwrap(),
            EngineConfig::default(),
        )
        .unwrap();
        let cfg = ServeConfig {
            api_keys: keys,
            ..ServeConfig::default()
        };
        let state = AppState::new(Services::default().with_inference(engine, MODEL), cfg);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hangar_serve::serve_with_grpc(
            http,
            Some(grpc),
            state,
            async {
                let _ = rx.await;
            },
        ));
        Some(Server {
            grpc: grpc_addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(Duration::from_secs(60), self.task.take().unwrap()).await;
        assert!(r.is_ok(), "server did not drain and stop");
    }

    /// One unary call: (grpc-status, grpc-message, response message bytes).
    async fn call(
        &self,
        method: &str,
        msg: &impl Message,
        headers: &[(&str, &str)],
    ) -> (u32, String, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(self.grpc).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/inference.GRPCInferenceService/{method}",
                self.grpc
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut client = client.ready().await.unwrap();
        let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
        let body = msg.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        send.send_data(frame.into(), true).unwrap();
        let (parts, mut body) = resp.await.unwrap().into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        // A trailers-only answer (an error) puts the status in the headers.
        let get = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let code = get("grpc-status").parse().expect("a grpc-status");
        let message = get("grpc-message").replace("%20", " ");
        let msg = if data.len() >= 5 {
            data[5..].to_vec()
        } else {
            Vec::new()
        };
        (code, message, msg)
    }
}

const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
const UNAUTHENTICATED: u32 = 16;

fn param(v: i64) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(v)),
    }
}

fn infer_request(
    model: &str,
    datatype: &str,
    contents: pb::InferTensorContents,
) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "r1".into(),
        parameters: HashMap::from([("max_tokens".to_string(), param(4))]),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "text_input".into(),
            datatype: datatype.into(),
            shape: vec![1],
            parameters: HashMap::new(),
            contents: Some(contents),
        }],
        ..Default::default()
    }
}

fn text(s: &str) -> pb::InferTensorContents {
    pb::InferTensorContents {
        bytes_contents: vec![s.as_bytes().to_vec()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_invalid_argument_and_good_ones_answer() {
    let Some(s) = Server::start(Vec::new()).await else {
        return;
    };
    // The same request with BYTES answers, so the refusals below are about the input.
    let (code, msg, body) = s
        .call(
            "ModelInfer",
            &infer_request(MODEL, "BYTES", text("Hello")),
            &[],
        )
        .await;
    assert_eq!(code, 0, "{msg}");
    let resp = pb::ModelInferResponse::decode(body.as_slice()).unwrap();
    assert_eq!(resp.id, "r1");
    assert_eq!(resp.outputs[0].name, "text_output");
    assert_eq!(resp.raw_output_contents.len(), 1);
    let tokens = resp.parameters["completion_tokens"].clone();
    assert!(matches!(
        tokens.parameter_choice,
        Some(pb::infer_parameter::ParameterChoice::Int64Param(1..=4))
    ));

    let ints = pb::InferTensorContents {
        int_contents: vec![7],
        ..Default::default()
    };
    let (code, msg, _) = s
        .call("ModelInfer", &infer_request(MODEL, "INT32", ints), &[])
        .await;
    assert_eq!(code, INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("text_input must be BYTES, got INT32"), "{msg}");

    // Elements in a field that does not match the datatype.
    let (code, msg, _) = s
        .call("ModelInfer", &infer_request(MODEL, "INT32", text("x")), &[])
        .await;
    assert_eq!(code, INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("int_contents"), "{msg}");

    let (code, msg, _) = s
        .call("ModelInfer", &infer_request(MODEL, "FP16", text("x")), &[])
        .await;
    assert_eq!(code, INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("FP16 is not supported"), "{msg}");

    // Raw contents that do not hold a BYTES element.
    let mut raw = infer_request(MODEL, "BYTES", Default::default());
    raw.raw_input_contents = vec![vec![9, 0, 0, 0, b'a']];
    let (code, msg, _) = s.call("ModelInfer", &raw, &[]).await;
    assert_eq!(code, INVALID_ARGUMENT, "{msg}");

    let mut bad_option = infer_request(MODEL, "BYTES", text("Hello"));
    bad_option.parameters.insert("max_tokens".into(), param(0));
    let (code, msg, _) = s.call("ModelInfer", &bad_option, &[]).await;
    assert_eq!(code, INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("max_tokens must be at least 1"), "{msg}");

    let (code, msg, _) = s
        .call(
            "ModelInfer",
            &infer_request("nope", "BYTES", text("Hello")),
            &[],
        )
        .await;
    assert_eq!(code, NOT_FOUND, "{msg}");
    assert!(msg.contains(MODEL), "{msg}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_except_on_probes() {
    let Some(s) = Server::start(vec!["k1".into()]).await else {
        return;
    };
    let (code, _, body) = s.call("ServerLive", &pb::ServerLiveRequest {}, &[]).await;
    assert_eq!(code, 0);
    assert!(
        pb::ServerLiveResponse::decode(body.as_slice())
            .unwrap()
            .live
    );
    let meta = pb::ModelMetadataRequest {
        name: MODEL.into(),
        version: String::new(),
    };
    let (code, msg, _) = s.call("ModelMetadata", &meta, &[]).await;
    assert_eq!(code, UNAUTHENTICATED, "{msg}");
    let (code, _, _) = s
        .call("ModelMetadata", &meta, &[("authorization", "Bearer k2")])
        .await;
    assert_eq!(code, UNAUTHENTICATED);
    let (code, msg, body) = s
        .call("ModelMetadata", &meta, &[("authorization", "Bearer k1")])
        .await;
    assert_eq!(code, 0, "{msg}");
    let m = pb::ModelMetadataResponse::decode(body.as_slice()).unwrap();
    assert_eq!(m.name, MODEL);
    assert_eq!(m.inputs[0].name, "text_input");
    let (code, msg, _) = s.call("ModelMetadata", &meta, &[("x-api-key", "k1")]).await;
    assert_eq!(code, 0, "{msg}");
    s.shutdown().await;
}
