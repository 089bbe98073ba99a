"""The detector pyfunc as code (MLflow models-from-code): MLflow keeps this file with a logged model and runs it
when the model is loaded, so no pickled Python object is stored. Do not import it: `track.models` names its path.
"""

from mlflow.models import set_model

from kubedistill.serve.pyfunc import OnnxDetectorModel

set_model(OnnxDetectorModel())
