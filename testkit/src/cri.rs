//! A CRI client for fixture nodes: pulls an image through containerd's CRI plugin, as the kubelet does, so the
//! node's image records are what a kubelet's pull leaves (the CRI's labels, the `repo@digest` and `sha256:<id>`
//! records, layers discarded under kind's `discard_unpacked_layers`).

use k8s_cri::v1::{ImageSpec, PullImageRequest, image_service_client::ImageServiceClient};
use tonic::transport::{Endpoint, Uri};

/// Pulls `image` through the CRI listening on the unix socket `socket` (for a node container, its
/// containerd's socket seen from the host: `/proc/<node pid>/root/run/containerd/containerd.sock`, which
/// needs root). Returns the image reference the CRI reports.
pub fn pull(socket: &str, image: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let socket = socket.to_owned();
        let channel = Endpoint::try_from("http://[::]:0")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| format!("connecting to the CRI: {e}"))?;
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reply = ImageServiceClient::new(channel)
            .pull_image(request)
            .await
            .map_err(|e| format!("PullImage {image}: {e}"))?;
        Ok(reply.into_inner().image_ref)
    })
}
