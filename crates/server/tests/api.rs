//! The HTTP API through a real server on 127.0.0.1 (port 0), in this process: the real router,
//! the real model pool with the shipped models, a real HTTP client. Every route, concurrent
//! uploads, the limits and the error answers.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message
#![allow(clippy::too_many_lines)] // a test reads best as one story

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::queue::{Order, Queue, ReviewState};
use cxr_core::tch::Device;
use cxr_server::{AppState, Limits, Models};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("samples").join(name)).unwrap()
}

const SAMPLES: [&str; 6] = [
    "hannover_2c35005f.png",
    "hannover_b343e657.png",
    "hannover_e1446fe8.png",
    "nih_00001299_000.png",
    "nih_00001385_000.png",
    "nih_00002013_002.png",
];

struct Server {
    url: String,
    state: Arc<AppState>,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

struct Options {
    jobs: usize,
    pending: usize,
    timeout: Duration,
    models: bool,
    /// The models folder (the shipped one unless a test damages a copy).
    models_dir: PathBuf,
    max_body: usize,
    limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jobs: 2,
            pending: 16,
            timeout: Duration::from_secs(600),
            models: true,
            models_dir: repo().join("models"),
            max_body: cxr_server::DEFAULT_MAX_BODY,
            limits: Limits::default(),
        }
    }
}

/// A server with its own data, cache and watch folders.
async fn start(options: Options) -> Server {
    cxr_explainers::link();
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::with_limits(
        &dir.path().join("data"),
        dir.path().join("watch"),
        options.timeout,
        options.max_body,
        options.limits,
    )
    .unwrap();
    if options.models {
        let cache = Cache::new(dir.path().join("cache"));
        let (jobs, pending, models_dir) = (options.jobs, options.pending, options.models_dir);
        let models = tokio::task::spawn_blocking(move || {
            let pool =
                cxr_server::start_pool(models_dir, Compute::on(Device::Cpu), jobs, pending, cache)
                    .unwrap();
            Models::new(pool).unwrap()
        })
        .await
        .unwrap();
        state.set_models(models);
    }
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // The server's own accept loop (header timeout, connection cap), as `cxr serve` runs it.
    tokio::spawn(cxr_server::serve_on(
        listener,
        Arc::clone(&state),
        std::future::pending(),
    ));
    Server {
        url,
        state,
        dir,
        client: reqwest::Client::new(),
    }
}

impl Server {
    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.bytes().await.unwrap().to_vec())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.get(path).await;
        (status, json(&body))
    }

    async fn upload(&self, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str("image/png")
            .unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = self
            .client
            .post(format!("{}/v1/classifier", self.url))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, json(&response.bytes().await.unwrap()))
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, json(&response.bytes().await.unwrap()))
    }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn id_of(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))[..16].to_owned()
}

/// An error answer: the status and a JSON `error` message.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, words: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(words),
        "{status}: {message:?} lacks {words:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_routes_and_the_others_answer_in_their_shapes() {
    let server = start(Options::default()).await;
    let (status, health) = server.get_json("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(repo().join("models/classifier.json")).unwrap())
            .unwrap();
    assert_eq!(
        ready["classes"], meta["classes"],
        "the shipped model's classes"
    );
    assert_eq!(ready["classes"][0], "covid");
    assert_eq!(ready["workers"], 2);

    let (status, headers, page) = server.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(headers.contains_key("content-security-policy"));
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"type="file""#) && page.contains("/page.js"));
    let (status, headers, script) = server.get("/page.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert!(
        String::from_utf8(script)
            .unwrap()
            .contains("/v1/classifier")
    );

    let (status, list) = server.get_json("/v1/explainers").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["explainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"grad-cam") && names.contains(&"lime"),
        "{names:?}"
    );
    let grad_cam = list["explainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "grad-cam")
        .unwrap();
    assert_eq!(grad_cam["aliases"], serde_json::json!(["gradcam"]));

    // POST /v1/classifier as a multipart upload: the seed's map and the full report.
    let bytes = sample("nih_00001299_000.png");
    let (status, first) = server.upload("chest.png", bytes.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(id, id_of(&bytes), "the id is the content's SHA-256 prefix");
    assert_eq!(first["cached"], false);
    let (covid, normal) = (
        first["COVID-19"].as_f64().unwrap(),
        first["NO FINDING"].as_f64().unwrap(),
    );
    // The seed's two answers: COVID-19, and every other class as NO FINDING.
    assert_eq!(first["probabilities"]["covid"].as_f64(), Some(covid));
    assert!((covid + normal - 1.0).abs() < 1e-4);
    assert!(["covid", "normal"].contains(&first["label"].as_str().unwrap()));
    assert!(first["threshold"].as_f64().unwrap() > 0.0);
    assert!(first["lung_fraction"].as_f64().unwrap() > 0.05);
    assert!(first["trust"]["flags"].is_array());
    assert!(first["trust"]["familiarity"].is_number());
    // Stored by content, privately, under the id only.
    let stored: Vec<String> = std::fs::read_dir(server.dir.path().join("data/uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored, [format!("{id}.png")]);

    // The same bytes as a raw body: the same id, from the cache.
    let (status, again) = server
        .post_raw("/v1/classifier", "image/png", bytes.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["COVID-19"], first["COVID-19"]);

    // GET /v1/classifier/:id, also by the full SHA-256.
    let (status, got) = server.get_json(&format!("/v1/classifier/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["probabilities"], first["probabilities"]);
    let full = first["sha256"].as_str().unwrap();
    let (status, by_hash) = server.get_json(&format!("/v1/classifier/{full}")).await;
    assert_eq!((status, &by_hash["id"]), (StatusCode::OK, &first["id"]));

    // The seed's Grad-CAM route (and its other spellings): a PNG the size of the radiograph.
    let (width, height) = image::load_from_memory(&bytes)
        .unwrap()
        .to_luma8()
        .dimensions();
    let mut overlays = Vec::new();
    for method in ["gradcam", "grad-cam", "grad_cam"] {
        let (status, headers, png) = server.get(&format!("/v1/explainer/{method}/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{method}: {}",
            String::from_utf8_lossy(&png)
        );
        assert_eq!(headers["content-type"], "image/png");
        let overlay = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(overlay.dimensions(), (width, height));
        overlays.push(png);
    }
    assert!(
        overlays.windows(2).all(|w| w[0] == w[1]),
        "one overlay, cached"
    );

    // The report as JSON, by query and by Accept.
    let (status, report) = server
        .get_json(&format!("/v1/explainer/gradcam/{id}?format=json"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["method"], "grad-cam");
    assert_eq!(report["target"], first["label"]);
    assert_eq!(report["cached"], true);
    assert!(report["quality"]["lung_mass_share"].as_f64().unwrap() > 0.0);
    assert!(report["heatmap"]["max"].as_f64().unwrap() > 0.0);
    assert_eq!(report["COVID-19"], first["COVID-19"]);
    let response = server
        .client
        .get(format!("{}/v1/explainer/grad-cam/{id}", server.url))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let by_accept = json(&response.bytes().await.unwrap());
    assert_eq!(by_accept["heatmap"], report["heatmap"]);

    // Another target class than the predicted one.
    let other = if first["label"] == "covid" {
        "normal"
    } else {
        "covid"
    };
    let (status, targeted) = server
        .get_json(&format!(
            "/v1/explainer/grad-cam/{id}?format=json&target={other}"
        ))
        .await;
    assert_eq!(
        (status, targeted["target"].as_str()),
        (StatusCode::OK, Some(other))
    );
    assert_error(
        &server
            .get_json(&format!(
                "/v1/explainer/grad-cam/{id}?format=json&target=cat"
            ))
            .await,
        StatusCode::BAD_REQUEST,
        "target",
    );
}

/// The seed's LIME route: a PNG overlay, then the same from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lime_overlay_is_a_png_of_the_radiograph() {
    let server = start(Options::default()).await;
    let bytes = sample("hannover_e1446fe8.png");
    let (status, answer) = server.upload("x.png", bytes.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["id"].as_str().unwrap();
    let (status, headers, png) = server.get(&format!("/v1/explainer/lime/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&png));
    assert_eq!(headers["x-cxr-cached"], "false");
    let overlay = image::load_from_memory(&png).unwrap().to_rgb8();
    let original = image::load_from_memory(&bytes).unwrap();
    assert_eq!(overlay.dimensions(), (original.width(), original.height()));
    assert_ne!(
        overlay.as_raw(),
        original.to_rgb8().as_raw(),
        "the heatmap is drawn over it"
    );
    let (status, headers, again) = server.get(&format!("/v1/explainer/lime/{id}")).await;
    assert_eq!(
        (status, &headers["x-cxr-cached"]),
        (StatusCode::OK, &"true".parse().unwrap())
    );
    assert_eq!(again, png);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_uploads_are_all_answered_correctly() {
    let server = Arc::new(start(Options::default()).await);
    let mut uploads: Vec<(String, Vec<u8>)> = SAMPLES
        .iter()
        .map(|name| ((*name).to_owned(), sample(name)))
        .collect();
    // Two more: the same content again, at the same time as the first.
    uploads.push(("again-1.png".into(), sample(SAMPLES[0])));
    uploads.push(("again-2.png".into(), sample(SAMPLES[3])));
    let tasks: Vec<_> = uploads
        .into_iter()
        .map(|(name, bytes)| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let answer = server.upload(&name, bytes.clone()).await;
                (name, bytes, answer)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    for (name, bytes, (status, answer)) in &answers {
        assert_eq!(*status, StatusCode::OK, "{name}: {answer}");
        assert_eq!(answer["id"].as_str().unwrap(), id_of(bytes), "{name}");
        // Each answer is its own image's: the same as asking for it alone afterwards.
        let (status, alone) = server
            .get_json(&format!(
                "/v1/classifier/{}",
                answer["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(alone["probabilities"], answer["probabilities"], "{name}");
        assert_eq!(alone["label"], answer["label"], "{name}");
    }
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, _, (_, a))| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        SAMPLES.len(),
        "the repeats share their image's id"
    );
    let stored = std::fs::read_dir(server.dir.path().join("data/uploads"))
        .unwrap()
        .count();
    assert_eq!(stored, SAMPLES.len(), "each content is stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_json_errors_with_their_status() {
    let server = start(Options::default()).await;
    let unknown = "0123456789abcdef";
    assert_error(
        &server.get_json(&format!("/v1/classifier/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "no image",
    );
    assert_error(
        &server
            .get_json(&format!("/v1/explainer/lime/{unknown}"))
            .await,
        StatusCode::NOT_FOUND,
        "no image",
    );
    for bad in [
        "xyz",
        "0123456789abcdeg",
        "0123456789abcdef00",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        assert_error(
            &server.get_json(&format!("/v1/classifier/{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid id",
        );
    }
    assert_error(
        &server.get_json("/v1/classifier/a/b").await,
        StatusCode::NOT_FOUND,
        "no such route",
    );
    assert_error(
        &server
            .get_json(&format!("/v1/explainer/nope/{unknown}"))
            .await,
        StatusCode::NOT_FOUND,
        "registered: ",
    );
    assert_error(
        &server.get_json("/nothing").await,
        StatusCode::NOT_FOUND,
        "no such route",
    );
    assert_error(
        &server
            .post_raw("/v1/classifier/0123456789abcdef", "image/png", vec![1])
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    );

    // Not an image: refused by type (415) or by content (422), and nothing is stored.
    let text = b"hello, I am not a radiograph".to_vec();
    assert_error(
        &server
            .post_raw("/v1/classifier", "text/plain", text.clone())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text/plain",
    );
    let part = reqwest::multipart::Part::bytes(text.clone())
        .file_name("notes.txt")
        .mime_str("text/plain")
        .unwrap();
    let response = server
        .client
        .post(format!("{}/v1/classifier", server.url))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(
        &server
            .post_raw("/v1/classifier", "image/png", text.clone())
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a PNG or JPEG",
    );
    let mut truncated = sample("nih_00001299_000.png");
    truncated.truncate(truncated.len() / 2);
    assert_error(
        &server
            .post_raw("/v1/classifier", "image/png", truncated)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "upload",
    );
    // A colour photograph is no chest radiograph.
    let mut photo = image::RgbImage::new(256, 256);
    for (x, y, pixel) in photo.enumerate_pixels_mut() {
        *pixel = image::Rgb([(x % 256) as u8, (y % 256) as u8, 200]);
    }
    let mut png = Vec::new();
    photo
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_error(
        &server.post_raw("/v1/classifier", "image/png", png).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a chest radiograph",
    );
    assert_error(
        &server
            .post_raw("/v1/classifier", "image/png", Vec::new())
            .await,
        StatusCode::BAD_REQUEST,
        "empty",
    );
    let response = server
        .client
        .post(format!("{}/v1/classifier", server.url))
        .multipart(reqwest::multipart::Form::new().text("note", "no file here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        std::fs::read_dir(server.dir.path().join("data/uploads"))
            .unwrap()
            .count(),
        0,
        "refused uploads are not stored"
    );
    assert_error(
        &server
            .get_json("/v1/explainer/lime/0123456789abcdef?format=gif")
            .await,
        StatusCode::NOT_FOUND,
        "no image",
    );
}

/// 50 MB is refused with 413: announced by Content-Length (answered before the body is read)
/// and streamed in chunks without a length (cut off at the limit). Nothing is stored.
/// A fault of the server's own models is a 500, never blamed on the client: a classifier whose
/// finite weights are so large that its logits overflow answers NaN, an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_of_the_models_is_a_500() {
    let models = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let path = entry.unwrap().path();
        // No ONNX export: it would no longer match the damaged weights (refused at load).
        if path.is_file() && path.extension().is_none_or(|e| e != "onnx") {
            std::fs::copy(&path, models.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let weights = models.path().join("classifier.safetensors");
    let mut tensors = cxr_core::tch::Tensor::read_safetensors(&weights).unwrap();
    for (name, tensor) in &mut tensors {
        if name == "fc.weight" {
            *tensor = tensor.full_like(3.0e38);
        }
    }
    cxr_core::tch::Tensor::write_safetensors(&tensors, &weights).unwrap();
    let meta = models.path().join("classifier.json");
    let mut json: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("weights_sha256");
    std::fs::write(&meta, serde_json::to_vec(&json).unwrap()).unwrap();

    let server = start(Options {
        models_dir: models.path().to_path_buf(),
        ..Options::default()
    })
    .await;
    let answer = server
        .upload("nih_00001299_000.png", sample("nih_00001299_000.png"))
        .await;
    assert_error(
        &answer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "non-finite probability",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_upload_is_refused_with_413() {
    let server = start(Options {
        models: false,
        ..Options::default()
    })
    .await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let (announced, streamed) = tokio::task::spawn_blocking(move || {
        (
            raw_upload(&address, 50_000_000, false),
            raw_upload(&address, 50_000_000, true),
        )
    })
    .await
    .unwrap();
    let (answer, _) = announced;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body larger than the 32 MiB"#),
        "{answer}"
    );
    // Streamed: the server stops reading at the limit and closes the connection. The 413 it
    // sends first may be lost to the client (closing with unread data resets the connection),
    // but no other answer may come, and the sender cannot get its 50 MB through.
    let (answer, sent) = streamed;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    assert!(sent.is_err(), "all 50 MB were taken");
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    assert_eq!(
        std::fs::read_dir(server.dir.path().join("data/uploads"))
            .unwrap()
            .count(),
        0
    );
}

/// Sends a `bytes`-long PNG upload by hand; returns the answer (head and body, as far as it
/// arrived) and whether the whole body could be sent. With a length, only the request head is
/// sent (the answer must come without the body); chunked, the body is sent 1 MB at a time
/// while the answer is read.
fn raw_upload(address: &str, bytes: usize, chunked: bool) -> (String, std::io::Result<()>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    // Never hang the test run: a server that neither answers nor closes fails it.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {bytes}")
    };
    let head = format!(
        "POST /v1/classifier HTTP/1.1\r\nHost: {address}\r\nContent-Type: image/png\r\n\
         {framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let sender = chunked.then(|| {
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![0_u8; 1_000_000];
            for _ in 0..bytes / chunk.len() {
                write!(writer, "{:X}\r\n", chunk.len())?;
                writer.write_all(&chunk)?;
                writer.write_all(b"\r\n")?;
            }
            writer.write_all(b"0\r\n\r\n")
        })
    });
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !String::from_utf8_lossy(&answer).contains('}') {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    // The sender stops when the server closes the connection, or after sending everything.
    let sent = sender.map_or(Ok(()), |s| s.join().unwrap());
    let _ = stream.shutdown(std::net::Shutdown::Both);
    (String::from_utf8_lossy(&answer).into_owned(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_with_retry_after_and_a_slow_one_too() {
    let server = start(Options {
        jobs: 1,
        pending: 1,
        timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let pool = &server.state.models().unwrap().pool;
    // One task holds the only worker, one waits in the queue: the queue is full.
    let (release, hold) = crossbeam_channel::bounded::<()>(0);
    let holding = {
        let hold = hold.clone();
        pool.submit(move |_| hold.recv().is_err())
    };
    let mut queued = None;
    while queued.is_none() {
        let hold = hold.clone();
        queued = pool.try_submit(move |_| hold.recv().is_err()).ok();
        tokio::task::yield_now().await;
    }
    let bytes = sample("nih_00001385_000.png");
    let response = server
        .client
        .post(format!("{}/v1/classifier", server.url))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body = json(&response.bytes().await.unwrap());
    assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");

    // Let the held task go; the queued one now holds the worker, and a request that waits
    // longer than the timeout is answered 503 too (its work still runs, and is cached).
    release.send(()).unwrap();
    assert!(!holding.recv().unwrap().unwrap());
    let waited = server
        .client
        .post(format!("{}/v1/classifier", server.url))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited.headers().contains_key("retry-after"));
    let body = json(&waited.bytes().await.unwrap());
    assert!(
        body["error"].as_str().unwrap().contains("no result within"),
        "{body}"
    );
    drop(release);
    assert!(queued.unwrap().recv().unwrap().unwrap());
    // Free again: the same upload is answered (from the work the timed-out request left).
    let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    while answer.0 == StatusCode::SERVICE_UNAVAILABLE {
        answer = server
            .post_raw("/v1/classifier", "image/png", bytes.clone())
            .await;
    }
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    assert_eq!(answer.1["id"].as_str().unwrap(), id_of(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_models_load_readiness_and_model_routes_are_503() {
    let server = start(Options {
        models: false,
        ..Options::default()
    })
    .await;
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    let (status, headers, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert!(json(&body)["error"].as_str().unwrap().contains("loading"));
    assert_error(
        &server
            .post_raw(
                "/v1/classifier",
                "image/png",
                sample("nih_00001385_000.png"),
            )
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "loading",
    );
    // Routes that need no model still answer.
    assert_eq!(server.get_json("/v1/explainers").await.0, StatusCode::OK);
    assert_eq!(
        server.get_json("/v1/training/queue").await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_go_to_the_watch_folder_queue() {
    let server = start(Options::default()).await;
    let (status, empty) = server.get_json("/v1/training/queue").await;
    assert_eq!((status, &empty["count"]), (StatusCode::OK, &Value::from(0)));
    let bytes = sample("hannover_b343e657.png");
    let (_, uploaded) = server.upload("b.png", bytes.clone()).await;
    let id = uploaded["id"].as_str().unwrap().to_owned();

    // An explanation on screen must be a registered explainer: nothing is written otherwise.
    let (status, refused) = server
        .post_raw(
            "/v1/training/queue",
            "application/json",
            serde_json::json!({ "id": id, "label": "normal", "shown": ["shap"] })
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().starts_with("shown: "),
        "{refused}"
    );
    assert_eq!(server.get_json("/v1/training/queue").await.1["count"], 0);

    // The seed's label name, the reviewer from a header, the seed's name of the explanation
    // shown (kept under its own).
    let response = server
        .client
        .post(format!("{}/v1/training/queue", server.url))
        .header("x-reviewer", "dr-lee")
        .json_body(&serde_json::json!({ "id": id, "label": "NO FINDING", "shown": ["gradcam"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let entry = json(&response.bytes().await.unwrap());
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["state"], "reviewed");
    assert_eq!(entry["review"]["label"], "normal");
    assert_eq!(entry["review"]["reviewer"], "dr-lee");
    assert_eq!(entry["review"]["shown"], serde_json::json!(["grad-cam"]));
    assert_eq!(entry["predicted"]["label"], uploaded["label"]);

    let (status, listed) = server.get_json("/v1/training/queue").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (listed["count"].as_u64(), listed["reviewed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(listed["entries"][0]["review"]["label"], "normal");
    let (_, pending) = server.get_json("/v1/training/queue?pending=true").await;
    assert_eq!(pending["entries"], serde_json::json!([]));

    // The queue the watcher and the viewer use, read by the core library.
    let queue = Queue::open(server.dir.path().join("watch")).unwrap();
    let items = queue.list(Order::Time).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].id, id);
    assert_eq!(items[0].state.state, ReviewState::Reviewed);
    assert_eq!(std::fs::read(items[0].image_path()).unwrap(), bytes);

    // Relabelled through a urlencoded form (the reviewer as a field): the first review is kept.
    let (status, relabelled) = server
        .post_raw(
            "/v1/training/queue",
            "application/x-www-form-urlencoded",
            format!("id={id}&label=covid&reviewer=dr+kim").into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{relabelled}");
    assert_eq!(relabelled["review"]["label"], "covid");
    assert_eq!(relabelled["history"][0]["reviewer"], "dr-lee");

    let label =
        |id: &str, label: &str| format!(r#"{{"id":"{id}","label":"{label}"}}"#).into_bytes();
    assert_error(
        &server
            .post_raw(
                "/v1/training/queue",
                "application/json",
                label(&id, "nromal"),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not one of the model's classes",
    );
    assert_error(
        &server
            .post_raw(
                "/v1/training/queue",
                "application/json",
                label("0123456789abcdef", "covid"),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no image",
    );
    assert_error(
        &server
            .post_raw(
                "/v1/training/queue",
                "application/json",
                label("../x", "covid"),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid id",
    );
    assert_error(
        &server
            .post_raw("/v1/training/queue", "application/json", b"{".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_error(
        &server
            .post_raw("/v1/training/queue", "text/plain", label(&id, "covid"))
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    // A page elsewhere cannot make a browser label for it.
    let response = server
        .client
        .post(format!("{}/v1/training/queue", server.url))
        .header("origin", "http://evil.example")
        .json_body(&serde_json::json!({ "id": id, "label": "normal" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let items = queue.list(Order::Time).unwrap();
    assert_eq!(
        items[0].label().map(cxr_core::queue::Label::as_str),
        Some("covid")
    );

    // Undo: dr kim's covid goes to the history marked undone, dr-lee's normal is current again;
    // a second undo leaves the entry pending, a third has nothing to take back.
    let undo = |id: &str| {
        server
            .client
            .post(format!("{}/v1/training/queue/{id}/undo", server.url))
            .header("x-reviewer", "dr-park")
            .send()
    };
    let response = undo(&id).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let entry = json(&response.bytes().await.unwrap());
    assert_eq!(entry["review"]["label"], "normal");
    assert_eq!(entry["review"]["reviewer"], "dr-lee");
    assert_eq!(entry["history"][0]["label"], "covid");
    assert_eq!(entry["history"][0]["undone"]["reviewer"], "dr-park");
    let entry = json(&undo(&id).await.unwrap().bytes().await.unwrap());
    assert_eq!(entry["state"], "pending_review");
    let response = undo(&id).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        undo("0123456789abcdef").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(queue.list(Order::Time).unwrap()[0].label(), None);
}

/// `RequestBuilder::json` needs reqwest's `json` feature; this is the same without it.
trait JsonBody {
    fn json_body(self, value: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }
}

/// Opens a connection and sends a request head for `path` with `headers`; the body is the
/// caller's to send (or not).
async fn send_head(server: &Server, path: &str, headers: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {address}\r\n{headers}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// What comes back on `stream` until the server closes it (or `wait` passes: then the answer
/// so far and `false`).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, wait: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// Issue 20, defect 4: bodies in flight share one byte budget. While one upload holds all of
/// it, the next waits (here 1 s), then is answered 503 with Retry-After; once the first is gone
/// its bytes are free again and uploads go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_byte_budget_wait_then_get_503() {
    let server = start(Options {
        jobs: 1,
        max_body: 2 << 20,
        limits: Limits {
            body_budget: 2 << 20,
            body_wait: Duration::from_secs(1),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    assert_eq!(server.state.budget.bytes(), 2 << 20);
    // Announces the largest body, sends a little of it and holds on.
    let mut holder = send_head(
        &server,
        "/v1/classifier",
        &format!("Content-Type: image/png\r\nContent-Length: {}\r\n", 2 << 20),
    )
    .await;
    tokio::io::AsyncWriteExt::write_all(&mut holder, &vec![0_u8; 32 << 10])
        .await
        .unwrap();
    while server.state.budget.available() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bytes = sample("nih_00001385_000.png");
    let started = std::time::Instant::now();
    let response = server
        .client
        .post(format!("{}/v1/classifier", server.url))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    let body = json(&response.bytes().await.unwrap());
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 MiB of request bodies"),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    // Requests without a body take none of it.
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    // The holder goes: its bytes come back, and the upload is answered.
    drop(holder);
    let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..50 {
        answer = server
            .post_raw("/v1/classifier", "image/png", bytes.clone())
            .await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
    }
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    assert_eq!(server.state.budget.available(), 2 << 20);
}

/// Issue 20, defect 5: the uploads folder grew without bound. With a cap of 300 kB, the oldest
/// uploads go first, but never one that is in the review queue; an evicted id is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploads_folder_is_capped_oldest_first_sparing_queued_images() {
    let server = start(Options {
        jobs: 1,
        limits: Limits {
            uploads_max: 300_000,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let uploads = server.dir.path().join("data/uploads");
    let stored = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&uploads)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let size = || -> u64 {
        std::fs::read_dir(&uploads)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let names = [
        "hannover_2c35005f.png", // 103.5 kB, labelled: in the queue
        "hannover_b343e657.png", // 133.3 kB
        "hannover_e1446fe8.png", // 116.2 kB
        "nih_00001299_000.png",  // 99.0 kB
    ];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (status, answer) = server.upload(name, sample(name)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
        if i == 0 {
            let (status, entry) = server
                .post_raw(
                    "/v1/training/queue",
                    "application/json",
                    format!(r#"{{"id":"{}","label":"normal"}}"#, ids[0]).into_bytes(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{entry}");
        }
        // Even while the cap is kept, the upload just stored is there.
        assert!(stored().contains(&format!("{}.png", ids[i])));
    }
    // The second went when the third came (the first is queued), the third when the fourth did.
    let expected: std::collections::BTreeSet<String> = [&ids[0], &ids[3]]
        .iter()
        .map(|id| format!("{id}.png"))
        .collect();
    assert_eq!(stored(), expected);
    assert!(size() <= 300_000, "{} bytes stored", size());
    assert_error(
        &server.get_json(&format!("/v1/classifier/{}", ids[1])).await,
        StatusCode::NOT_FOUND,
        "no image",
    );
    assert_eq!(
        server
            .get_json(&format!("/v1/classifier/{}", ids[0]))
            .await
            .0,
        StatusCode::OK
    );
    // Uploading it again brings it back, as the newest.
    let (status, _) = server.upload(names[1], sample(names[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(stored().contains(&format!("{}.png", ids[1])));
    assert!(
        !stored().contains(&format!("{}.png", ids[3])),
        "{:?}",
        stored()
    );
    assert!(stored().contains(&format!("{}.png", ids[0])));
}

/// Issue 20, defect 6, with 1-second limits: a header that stops halfway and an idle
/// kept-alive connection are closed; a body that never comes, one trickled a byte at a time
/// and a chunked one that stops are answered 408 (as docs/http-api.md says) and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_bodies_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let server = start(Options {
        models: false,
        limits: Limits {
            header_timeout: Duration::from_secs(1),
            body_window: Duration::from_secs(1),
            body_min_bytes: 1024,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let wait = Duration::from_secs(10);
    let address = server.url.trim_start_matches("http://").to_owned();

    // Half a header.
    let started = std::time::Instant::now();
    let mut half = tokio::net::TcpStream::connect(&address).await.unwrap();
    half.write_all(b"POST /v1/classifier HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut half, wait).await;
    assert!(closed && answer.is_empty(), "{closed} {answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing at all, and a kept-alive connection after its first answer.
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert!(read_until_closed(&mut silent, wait).await.1);
    let mut kept = tokio::net::TcpStream::connect(&address).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut kept, wait).await;
    assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer}");

    let slow = "the request body arrived too slowly: less than 1 KiB in 1 s";
    // A body announced and never sent.
    let started = std::time::Instant::now();
    let mut never = send_head(
        &server,
        "/v1/classifier",
        "Content-Type: image/png\r\nContent-Length: 1000\r\n",
    )
    .await;
    let (answer, closed) = read_until_closed(&mut never, wait).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(slow), "{answer}");
    assert!(closed, "the connection is closed after the 408");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A byte every 300 ms (the label route reads its body too).
    let mut trickle = send_head(
        &server,
        "/v1/training/queue",
        "Content-Type: application/json\r\nContent-Length: 1000\r\n",
    )
    .await;
    let (mut reader, mut writer) = trickle.split();
    let (answer, ()) = tokio::join!(
        async {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                wait,
                tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut answer),
            )
            .await;
            String::from_utf8_lossy(&answer).into_owned()
        },
        async {
            for _ in 0..20 {
                if writer.write_all(b"{").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(slow), "{answer}");

    // Chunked, stopping after the first chunk.
    let mut chunked = send_head(
        &server,
        "/v1/classifier",
        "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n",
    )
    .await;
    chunked.write_all(b"4\r\n\x89PNG\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut chunked, wait).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body that keeps the pace is read whole (and then refused for what it is).
    let started = std::time::Instant::now();
    let mut steady = send_head(
        &server,
        "/v1/classifier",
        &format!(
            "Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n",
            4 * 2048
        ),
    )
    .await;
    for _ in 0..4 {
        steady.write_all(&[b'x'; 2048]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (answer, _) = read_until_closed(&mut steady, wait).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "models not loaded: {answer}"
    );
    assert_eq!(server.get_json("/healthz").await.0, StatusCode::OK);
    assert_eq!(
        server.state.budget.available(),
        server.state.budget.bytes(),
        "every body's bytes are back"
    );
}

/// Issue 20, defect 5 (what is stored): a PNG padded with a 2 MB text chunk and a JPEG padded
/// with 1.2 MB of comments and EXIF-like segments are analysed and stored without the padding;
/// the id is the stored file's hash (here the unpadded picture's, so the padded PNG is answered
/// from the cache of its plain upload), the pixels are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_png_and_jpeg_uploads_are_stored_without_their_padding() {
    let server = start(Options {
        jobs: 1,
        ..Options::default()
    })
    .await;
    let uploads = server.dir.path().join("data/uploads");
    let plain = sample("nih_00001299_000.png");
    let (status, first) = server.upload("plain.png", plain.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["id"].as_str().unwrap(), id_of(&plain));

    // A tEXt chunk of 2 MB after the header.
    let mut text = b"tEXtComment\0".to_vec();
    text.extend(std::iter::repeat_n(b'x', 2 << 20));
    let mut padded = plain[..33].to_vec();
    padded.extend_from_slice(&((text.len() - 4) as u32).to_be_bytes());
    padded.extend_from_slice(&text);
    padded.extend_from_slice(&crc32(&text).to_be_bytes());
    padded.extend_from_slice(&plain[33..]);
    let (status, answer) = server.post_raw("/v1/classifier", "image/png", padded).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["id"], first["id"], "the stored image's id");
    assert_eq!(answer["cached"], true);
    assert_eq!(answer["probabilities"], first["probabilities"]);
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);

    // The same radiograph as a JPEG, with 20 comments and 20 APP1 segments of 30 kB each.
    let mut jpeg = Vec::new();
    image::load_from_memory(&plain)
        .unwrap()
        .to_luma8()
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let mut stuffed = jpeg[..2].to_vec();
    for marker in [0xfe_u8, 0xe1] {
        for _ in 0..20 {
            stuffed.extend_from_slice(&[0xff, marker]);
            stuffed.extend_from_slice(&30_002_u16.to_be_bytes());
            stuffed.extend(std::iter::repeat_n(b'c', 30_000));
        }
    }
    stuffed.extend_from_slice(&jpeg[2..]);
    assert!(stuffed.len() > jpeg.len() + (1 << 20));
    let (status, answer) = server
        .post_raw("/v1/classifier", "image/jpeg", stuffed)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["id"].as_str().unwrap();
    assert_eq!(id, id_of(&jpeg), "the JPEG without its segments");
    let stored = std::fs::read(uploads.join(format!("{id}.jpg"))).unwrap();
    assert_eq!(stored, jpeg);
    let (status, again) = server.get_json(&format!("/v1/classifier/{id}")).await;
    assert_eq!(
        (status, &again["cached"]),
        (StatusCode::OK, &Value::Bool(true))
    );
}

/// CRC-32 of PNG chunks (ISO 3309), bit by bit: the tests' chunks are small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// At most `max_connections` are served at once: with two idle connections open, a third is
/// served only once the header timeout (2 s) has closed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn() {
    use tokio::io::AsyncWriteExt;
    let server = start(Options {
        models: false,
        limits: Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let idle = [
        tokio::net::TcpStream::connect(&address).await.unwrap(),
        tokio::net::TcpStream::connect(&address).await.unwrap(),
    ];
    // Both accepted and idle before the third comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tokio::net::TcpStream::connect(&address).await.unwrap();
    third
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took >= Duration::from_millis(1800),
        "served after {took:?}, before the idle ones were closed"
    );
    drop(idle);
}
