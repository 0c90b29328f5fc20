"""The registry listings `FeatureStore` and `Client` share: each class says
how to list one kind (`_list`), this mixin names the kinds."""
from __future__ import annotations


class RegistryListing:
    def _list(self, kind: str) -> list[dict]:
        raise NotImplementedError

    def list_entities(self) -> list[dict]:
        return self._list("entity")

    def list_streams(self) -> list[dict]:
        return self._list("stream")

    def list_sources(self) -> list[dict]:
        return self._list("source")

    def list_feature_views(self) -> list[dict]:
        return self._list("feature_view")

    def list_request_sources(self) -> list[dict]:
        return self._list("request_source")

    def list_on_demand_feature_views(self) -> list[dict]:
        return self._list("on_demand_view")

    def list_feature_services(self) -> list[dict]:
        return self._list("feature_service")
