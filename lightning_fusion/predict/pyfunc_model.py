"""The MLflow "model from code" of lightning_fusion's pyfunc models: MLflow runs this file to get the model.

No Python object is pickled into the logged model; :class:`~lightning_fusion.predict.serving.FusionPyfunc`
loads the checkpoint artifact with ``weights_only=True``. Used by :func:`lightning_fusion.predict.serving.save_pyfunc`.
"""

from mlflow.models import set_model

from lightning_fusion.predict.serving import FusionPyfunc

set_model(FusionPyfunc())
