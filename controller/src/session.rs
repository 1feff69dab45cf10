//! The session a controller serves to its status page: what an application running on it
//! (the `preprocess` job) knows that the engine does not — where its outputs are, the pictures
//! of each movie, and the selection of movies that pass its thresholds.
//!
//! The engine carries no compute or file-format code, so the application implements
//! [`Session`] and hands it over with [`ControllerView::set_session`](crate::ControllerView::set_session);
//! the routes under `/api/session` answer `404 no_session` until then.

use warp_common::preprocessing::{SelectionSummary, SelectionThresholds, SessionInfo};

use crate::http::ApiError;

/// A picture of one movie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovieImage {
    /// The dose-weighted average, downsampled (`thumbnails/<name>.png`).
    Thumbnail,
    /// The power spectrum with the fitted CTF's zeros (`powerspectrum/<name>.png`).
    Spectrum,
}

impl MovieImage {
    /// The name in the route (`/api/session/movies/{name}/{image}`).
    pub fn parse(s: &str) -> Option<MovieImage> {
        match s {
            "thumbnail" => Some(MovieImage::Thumbnail),
            "spectrum" => Some(MovieImage::Spectrum),
            _ => None,
        }
    }
}

/// What the application behind a controller's status page provides. Called from handler
/// threads without the controller's lock held, so it may read and write files.
pub trait Session: Send + Sync {
    /// `GET /api/session`.
    fn info(&self) -> SessionInfo;
    /// `GET /api/session/movies/{name}/{image}`: PNG bytes, or an error (404 for a movie or
    /// picture that does not exist).
    fn image(&self, movie: &str, image: MovieImage) -> Result<Vec<u8>, ApiError>;
    /// `POST /api/session/selection`: judges every processed movie, writes the selected STAR
    /// file and saves the thresholds with the session.
    fn select(&self, thresholds: &SelectionThresholds) -> Result<SelectionSummary, ApiError>;
}
