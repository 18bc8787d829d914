//! The controller's plugins and their state (loaded, disabled, or why they failed to load),
//! with call and failure counts.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use super::error::ApiResult;
use super::{access, AppState, Auth};
use crate::controller::plugins::PluginInfo;

pub struct PluginApi;

#[OpenApi(tag = "super::system::Tag::Plugins")]
impl PluginApi {
    /// List plugins found in the plugins directory.
    #[oai(path = "/plugins", method = "get", operation_id = "plugin_list")]
    async fn list(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<PluginInfo>>> {
        access::operator(&auth.0, "listing plugins")?;
        Ok(Json(state.plugins.list()))
    }
}
